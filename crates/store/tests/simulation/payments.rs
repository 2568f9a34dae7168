//! Card money and Auto Top-Up in the simulation.
//!
//! Three parts:
//!
//! - the reference model of what the store keeps about payments ([`PayModel`], part of
//!   [`Model`]): cards and setup sessions, top-ups and their idempotency keys, refunds,
//!   disputes, processed webhook events and each account's Auto Top-Up rule, written from
//!   the product rules (PRODUCT.md, ARCHITECTURE.md) and not from the store's or the core's
//!   code: its own status transitions, recharge decision, amount and cool-down;
//! - a simulated processor ([`Processor`], outside the model: it is the world, not the
//!   store) that decides what happens to each payment, once per processor idempotency key,
//!   and emits news that the simulation delivers duplicated, reordered, late or never;
//! - the steps that drive both, and the invariants checked after every step: what the
//!   store says equals the model, no credit without a charge, at most one open auto top-up
//!   per account, no recharge while one is open, cooling down, off or above the threshold,
//!   the monthly cap, and money conservation per account. At the end of a seed a drain
//!   (restart, resume, recovery, every webhook event not acknowledged yet, in any order)
//!   must bring the store to exactly what the processor charged, refunded and lost to
//!   disputes.
//!
//! Webhooks are acknowledged once applied and never sent again (Stripe's behaviour), and the
//! processor is hostile about it: refunds and disputes happen before the store heard of the
//! payment's success (or could link the payment), dashboard refunds while one of Tollgate's
//! is pending, and their news arrives in any order. Two orderings once lost money, and are
//! closed as follows (the simulation checks both after every step and at the drain):
//!
//! - news about a payment the store does not know has succeeded (`charge.refunded`, a
//!   dispute) is not applied blind: Billing first asks the processor for the payment and
//!   settles the top-up from it, then applies the news (the steps here do the same before
//!   delivering it), so nothing is acknowledged and lost (once seeds 7, 122, 163);
//! - a `charge.refunded` total heard while one of Tollgate's refunds is pending may hide a
//!   dashboard refund (the pending one is counted already): the store keeps the largest
//!   total heard, and when the processor refuses Tollgate's refund, what that total says
//!   beyond the store's refunded total is recorded with the refusal (once seed 200).

use std::collections::{BTreeMap, HashMap, HashSet};

use tollgate_core::{
    AutoRechargeSettings, DisputeStatus, NewTopup, RechargeBlocked, RechargeRule, RechargeStatus,
    TopupAmount, TopupLimits, TopupOutcome, TopupSource, TopupStatus,
};
use tollgate_store::{
    AutoRechargeChange, AutoRechargeRecord, AutoRechargeStart, CardRecord, CardSetupResult, DisputeApplied,
    DisputeNews, PaymentProfile, RefundRecord, RefundRequest, RefundState, TopupRecord, TopupReference,
};

use rand::seq::SliceRandom;

use super::*;

/// PRODUCT.md: one top-up is $10.00 to $10,000.00.
const MIN_TOPUP: i64 = 10_000_000;
const MAX_TOPUP: i64 = 10_000_000_000;
const CENT: i64 = 10_000;
const DOLLAR: i64 = 1_000_000;
/// PRODUCT.md: $5,000 a month unless the customer sets another cap.
const DEFAULT_CAP: i64 = 5_000 * DOLLAR;
/// PRODUCT.md: a failed rule waits an hour.
const COOL_DOWN: Duration = Duration::seconds(3_600);
/// The store looks at most this many sequences past keys its customers took.
const MAX_SKIPPED_SEQUENCES: u64 = 8;

// ===========================================================================
// Operations
// ===========================================================================

/// A payment operation on the store.
#[derive(Clone, Debug)]
pub(crate) enum PayOp {
    SetCustomer(String, String),
    RecordSetup(String, String),
    CompleteSetup(String, CardRecord),
    AdoptCard(String, CardRecord),
    RemoveCard(String),
    CreateTopup(NewTopup),
    Link(String, Option<String>, Option<String>),
    Settle(String, TopupOutcome),
    BeginRefund(RefundRequest),
    FinishRefund(String, Result<String, String>),
    /// `charge.refunded`: the processor's refunded total of a payment.
    Reconcile(TopupReference, Micros),
    Dispute(DisputeNews),
    Event(String, String),
    SetRule(String, AutoRechargeChange),
    Begin(String),
    /// `due_auto_recharges(now, limit)`: the worker passes its clock's reading.
    Due(usize, Ts),
    OpenAuto(usize),
    /// The recovery pass's `open_topups(created_before, limit)`.
    OpenTopups(Ts, usize),
    Find(TopupReference),
    Profile(String),
}

/// What the store answered.
#[derive(Debug)]
pub(crate) enum PayOutcome {
    Customer(StoreResult<String>),
    Unit(StoreResult<()>),
    Card(StoreResult<CardSetupResult>),
    Removed(StoreResult<Option<CardRecord>>),
    Created(StoreResult<Idempotent<TopupRecord>>),
    Topup(StoreResult<TopupRecord>),
    Refund(StoreResult<Idempotent<RefundRecord>>),
    Refunded(StoreResult<RefundRecord>),
    Reconciled(StoreResult<Option<RefundRecord>>),
    Dispute(StoreResult<Option<DisputeApplied>>),
    Event(StoreResult<bool>),
    Rule(StoreResult<AutoRechargeRecord>),
    Begin(StoreResult<AutoRechargeStart>),
    Due(StoreResult<Vec<AccountId>>),
    Open(StoreResult<Vec<TopupRecord>>),
    Found(StoreResult<Option<TopupRecord>>),
    Profile(StoreResult<PaymentProfile>),
}

fn account_id(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

fn actor() -> Actor {
    Actor::ApiKey("key_sim".to_owned())
}

pub(crate) async fn execute(store: SharedStore, op: PayOp) -> PayOutcome {
    match op {
        PayOp::SetCustomer(account, customer) => PayOutcome::Customer(
            store
                .set_processor_customer(&account_id(&account), &customer)
                .await,
        ),
        PayOp::RecordSetup(account, session) => {
            PayOutcome::Unit(store.record_card_setup(&account_id(&account), &session).await)
        }
        PayOp::CompleteSetup(session, card) => {
            PayOutcome::Card(store.complete_card_setup(&session, card, actor()).await)
        }
        PayOp::AdoptCard(account, card) => {
            PayOutcome::Card(store.adopt_card(&account_id(&account), card, Actor::System).await)
        }
        PayOp::RemoveCard(account) => {
            PayOutcome::Removed(store.remove_card(&account_id(&account), actor()).await)
        }
        PayOp::CreateTopup(topup) => PayOutcome::Created(store.create_topup(topup).await),
        PayOp::Link(topup, session, payment) => {
            PayOutcome::Topup(store.link_topup(&topup, session, payment).await)
        }
        PayOp::Settle(topup, outcome) => PayOutcome::Topup(store.settle_topup(&topup, outcome).await),
        PayOp::BeginRefund(request) => PayOutcome::Refund(store.begin_refund(request).await),
        PayOp::FinishRefund(refund, answer) => {
            PayOutcome::Refunded(store.finish_refund(&refund, answer).await)
        }
        PayOp::Reconcile(reference, total) => {
            PayOutcome::Reconciled(store.reconcile_refunded(reference, total).await)
        }
        PayOp::Dispute(news) => PayOutcome::Dispute(store.apply_dispute(news).await),
        PayOp::Event(id, kind) => PayOutcome::Event(store.record_processor_event(&id, &kind).await),
        PayOp::SetRule(account, change) => PayOutcome::Rule(
            store
                .set_auto_recharge(&account_id(&account), change, actor())
                .await,
        ),
        PayOp::Begin(account) => PayOutcome::Begin(
            store
                .begin_auto_recharge(&account_id(&account), TopupLimits::default())
                .await,
        ),
        PayOp::Due(limit, now) => PayOutcome::Due(store.due_auto_recharges(now, limit).await),
        PayOp::OpenAuto(limit) => PayOutcome::Open(store.open_auto_recharges(limit).await),
        PayOp::OpenTopups(before, limit) => PayOutcome::Open(store.open_topups(before, limit).await),
        PayOp::Find(reference) => PayOutcome::Found(store.find_topup(reference).await),
        PayOp::Profile(account) => PayOutcome::Profile(store.payment_profile(&account_id(&account)).await),
    }
}

pub(crate) fn labels(outcome: &PayOutcome) -> Vec<&'static str> {
    let plain = |result: Result<(), &StoreError>| match result {
        Ok(()) => "ok",
        Err(error) => error_label(error),
    };
    let label = match outcome {
        PayOutcome::Customer(result) => plain(result.as_ref().map(|_| ())),
        PayOutcome::Unit(result) => plain(result.as_ref().map(|_| ())),
        PayOutcome::Card(Ok(result)) if !result.applied => "card: unchanged",
        PayOutcome::Card(result) => plain(result.as_ref().map(|_| ())),
        PayOutcome::Removed(Ok(None)) => "card: none to remove",
        PayOutcome::Removed(result) => plain(result.as_ref().map(|_| ())),
        PayOutcome::Created(result) => result_label(result, |value| value.replayed),
        PayOutcome::Topup(Ok(record)) => match record.status {
            TopupStatus::Succeeded => "top-up: succeeded",
            TopupStatus::Failed => "top-up: failed",
            TopupStatus::Canceled => "top-up: canceled",
            TopupStatus::RequiresAction => "top-up: requires_action",
            TopupStatus::Pending | TopupStatus::RequiresPaymentMethod => "top-up: open",
        },
        PayOutcome::Topup(Err(error)) => error_label(error),
        PayOutcome::Refund(result) => result_label(result, |value| value.replayed),
        PayOutcome::Refunded(Ok(record)) => match record.state {
            RefundState::Pending => "refund: pending",
            RefundState::Succeeded => "refund: succeeded",
            RefundState::Failed => "refund: failed",
        },
        PayOutcome::Refunded(Err(error)) => error_label(error),
        PayOutcome::Reconciled(Ok(Some(_))) => "reconcile: refund recorded",
        PayOutcome::Reconciled(Ok(None)) => "reconcile: nothing new",
        PayOutcome::Reconciled(Err(error)) => error_label(error),
        PayOutcome::Dispute(Ok(None)) => "dispute: no top-up found",
        PayOutcome::Dispute(Ok(Some(applied))) if applied.line.is_some() => "dispute: money moved",
        PayOutcome::Dispute(Ok(Some(_))) => "dispute: no money moved",
        PayOutcome::Dispute(Err(error)) => error_label(error),
        PayOutcome::Event(Ok(true)) => "event: new",
        PayOutcome::Event(Ok(false)) => "event: duplicate",
        PayOutcome::Event(Err(error)) => error_label(error),
        PayOutcome::Rule(result) => plain(result.as_ref().map(|_| ())),
        PayOutcome::Begin(Ok(AutoRechargeStart::Started(_))) => "begin: started",
        PayOutcome::Begin(Ok(AutoRechargeStart::NotDue)) => "begin: not due",
        PayOutcome::Begin(Ok(AutoRechargeStart::Blocked(blocked))) => match blocked {
            RechargeBlocked::Disabled => "begin: blocked (off)",
            RechargeBlocked::InFlight { .. } => "begin: blocked (in flight)",
            RechargeBlocked::CoolingDown { .. } => "begin: blocked (cooling down)",
            RechargeBlocked::CapReached => "begin: blocked (cap reached)",
        },
        PayOutcome::Begin(Err(error)) => error_label(error),
        PayOutcome::Due(Ok(due)) if due.is_empty() => "due: none",
        PayOutcome::Due(result) => plain(result.as_ref().map(|_| ())),
        PayOutcome::Open(result) => plain(result.as_ref().map(|_| ())),
        PayOutcome::Found(Ok(None)) => "find: none",
        PayOutcome::Found(result) => plain(result.as_ref().map(|_| ())),
        PayOutcome::Profile(result) => plain(result.as_ref().map(|_| ())),
    };
    vec![label]
}

/// Whether the outcome is the one that wrote (for [`Order::FreshFirst`]).
pub(crate) fn is_fresh(outcome: &PayOutcome) -> bool {
    match outcome {
        PayOutcome::Begin(Ok(AutoRechargeStart::Started(_))) => true,
        PayOutcome::Created(Ok(created)) => !created.replayed,
        PayOutcome::Refund(Ok(refund)) => !refund.replayed,
        _ => false,
    }
}

/// An error of the expected kind, when its message is the store's to word.
fn expect_kind<T: Debug>(observed: &StoreResult<T>, label: &str) -> Check {
    match observed {
        Err(error) if error_label(error) == label => Ok(()),
        other => Err(format!("expected a {label} error, store says {other:?}")),
    }
}

// ===========================================================================
// The reference model
// ===========================================================================

/// The Auto Top-Up rule's state as the model keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RuleStatus {
    Armed,
    InFlight(u64),
    Failed {
        reason: String,
        at: Ts,
    },
    ActionRequired {
        reason: String,
        at: Ts,
    },
    /// The cap stopped a recharge in the cycle with this index (and start).
    CapReached {
        index: i64,
        start: Ts,
    },
}

#[derive(Clone, Debug)]
struct ModelRule {
    enabled: bool,
    status: RuleStatus,
    last_sequence: u64,
    threshold: i64,
    target: i64,
    cap: i64,
    updated_at: Ts,
    /// Cycle in which the cap was lowered (what was recharged may then exceed it).
    cap_lowered_in: Option<i64>,
    /// Cycle in which an auto top-up the rule had given up on succeeded after all.
    late_success_in: Option<i64>,
    /// Recharges started since the available balance last stood at or above the threshold.
    starts_this_crossing: u32,
}

impl ModelRule {
    fn same_state(&self, other: &ModelRule) -> bool {
        (
            self.enabled,
            &self.status,
            self.last_sequence,
            self.threshold,
            self.target,
            self.cap,
        ) == (
            other.enabled,
            &other.status,
            other.last_sequence,
            other.threshold,
            other.target,
            other.cap,
        )
    }

    /// A card or settings change: back to armed, except a recharge in flight stays so.
    fn rearm(&mut self) {
        if !matches!(self.status, RuleStatus::InFlight(_)) {
            self.status = RuleStatus::Armed;
        }
    }

    fn cool_down_until(&self) -> Option<Ts> {
        match &self.status {
            RuleStatus::Failed { at, .. } | RuleStatus::ActionRequired { at, .. } => Some(*at + COOL_DOWN),
            _ => None,
        }
    }

    fn core_status(&self) -> RechargeStatus {
        match &self.status {
            RuleStatus::Armed => RechargeStatus::Armed,
            RuleStatus::InFlight(sequence) => RechargeStatus::InFlight { sequence: *sequence },
            RuleStatus::Failed { reason, at } => RechargeStatus::Failed {
                reason: reason.clone(),
                failed_at: *at,
            },
            RuleStatus::ActionRequired { reason, at } => RechargeStatus::ActionRequired {
                reason: reason.clone(),
                failed_at: *at,
            },
            RuleStatus::CapReached { start, .. } => RechargeStatus::CapReached { cycle_start: *start },
        }
    }
}

#[derive(Clone, Debug, Default)]
struct PayAccount {
    customer: Option<String>,
    card: Option<CardRecord>,
    /// Money taken back (refund, dispute) left the balance below its floor.
    flagged: bool,
    rule: Option<ModelRule>,
}

/// What a top-up's key was first used for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fingerprint {
    Topup(i64),
    Auto(u64, i64),
}

#[derive(Clone, Debug)]
struct ModelTopup {
    id: String,
    account: String,
    amount: i64,
    source: TopupSource,
    status: TopupStatus,
    key: String,
    fingerprint: Fingerprint,
    checkout_session: Option<String>,
    payment_reference: Option<String>,
    charge_reference: Option<String>,
    card_brand: Option<String>,
    card_last4: Option<String>,
    failure_code: Option<String>,
    failure_message: Option<String>,
    credited_transaction: Option<String>,
    balances_after_credit: Option<Balances>,
    refunded: i64,
    disputed: i64,
    /// The largest refunded total the processor reported (kept by the store, not shown in
    /// the record): what a refused refund is measured against.
    processor_refunded: i64,
    created_at: Ts,
    updated_at: Ts,
    succeeded_at: Option<Ts>,
    recharge_sequence: Option<u64>,
}

impl ModelTopup {
    fn record(&self) -> TopupRecord {
        TopupRecord {
            id: self.id.clone(),
            account: account_id(&self.account),
            amount: Micros::new(self.amount),
            source: self.source,
            status: self.status,
            idempotency_key: self.key.clone(),
            checkout_session: self.checkout_session.clone(),
            payment_reference: self.payment_reference.clone(),
            charge_reference: self.charge_reference.clone(),
            card_brand: self.card_brand.clone(),
            card_last4: self.card_last4.clone(),
            failure_code: self.failure_code.clone(),
            failure_message: self.failure_message.clone(),
            credited_transaction: self.credited_transaction.clone(),
            balances_after_credit: self.balances_after_credit,
            refunded: Micros::new(self.refunded),
            disputed: Micros::new(self.disputed),
            created_at: self.created_at,
            updated_at: self.updated_at,
            succeeded_at: self.succeeded_at,
            recharge_sequence: self.recharge_sequence,
        }
    }

    fn is_open(&self) -> bool {
        is_open(self.status)
    }
}

#[derive(Clone, Debug)]
struct ModelRefund {
    id: String,
    topup: String,
    account: String,
    amount: i64,
    state: RefundState,
    processor_refund: Option<String>,
    /// The request as first made (a replay must match it).
    requested: Option<i64>,
    reason: String,
    /// `None` for a refund learnt from the processor's totals.
    key: Option<String>,
    taken_transaction: String,
    balances_after: Balances,
    created_at: Ts,
}

impl ModelRefund {
    fn record(&self) -> RefundRecord {
        RefundRecord {
            id: self.id.clone(),
            topup_id: self.topup.clone(),
            account: account_id(&self.account),
            amount: Micros::new(self.amount),
            state: self.state,
            processor_refund: self.processor_refund.clone(),
            reason: self.reason.clone(),
            idempotency_key: self.key.clone(),
            taken_transaction: self.taken_transaction.clone(),
            balances_after: self.balances_after,
            created_at: self.created_at,
        }
    }
}

#[derive(Clone, Debug)]
struct ModelDispute {
    topup: String,
    status: DisputeStatus,
    /// The amount first heard of: what was taken, and what a win gives back.
    amount: i64,
}

/// Everything the store keeps about payments, as the model expects it.
#[derive(Clone, Debug, Default)]
pub(crate) struct PayModel {
    accounts: BTreeMap<String, PayAccount>,
    /// Setup session → (account, card confirmed with it).
    setups: BTreeMap<String, (String, Option<String>)>,
    topups: BTreeMap<String, ModelTopup>,
    topup_keys: HashMap<(String, String), String>,
    refunds: BTreeMap<String, ModelRefund>,
    refund_keys: HashMap<(String, String), String>,
    disputes: BTreeMap<String, ModelDispute>,
    events: HashSet<String>,
    /// The monthly cap in force when each auto top-up started.
    start_caps: HashMap<String, i64>,
}

impl PayModel {
    pub(crate) fn flagged(&self, account: &str) -> bool {
        self.accounts.get(account).is_some_and(|pay| pay.flagged)
    }

    pub(crate) fn active(&self) -> bool {
        !self.accounts.is_empty() || !self.topups.is_empty()
    }

    fn account(&mut self, id: &str) -> &mut PayAccount {
        self.accounts.entry(id.to_owned()).or_default()
    }

    fn open_auto(&self, account: &str) -> Option<&ModelTopup> {
        self.topups.values().find(|topup| {
            topup.account == account && topup.source == TopupSource::AutoRecharge && topup.is_open()
        })
    }

    fn find(&self, reference: &TopupReference) -> Option<&ModelTopup> {
        // Ids are unique and ordered like the store's: the first match is the oldest.
        self.topups.values().find(|topup| match reference {
            TopupReference::CheckoutSession(id) => topup.checkout_session.as_deref() == Some(id.as_str()),
            TopupReference::Payment(id) => topup.payment_reference.as_deref() == Some(id.as_str()),
            TopupReference::Charge(id) => topup.charge_reference.as_deref() == Some(id.as_str()),
        })
    }
}

fn is_open(status: TopupStatus) -> bool {
    matches!(
        status,
        TopupStatus::Pending | TopupStatus::RequiresPaymentMethod | TopupStatus::RequiresAction
    )
}

/// A success is final; anything else may still become a success (money taken is
/// always credited); an open top-up may become anything else; a repeat changes nothing.
fn may_become(from: TopupStatus, to: TopupStatus) -> bool {
    if from == TopupStatus::Succeeded {
        return false;
    }
    if to == TopupStatus::Succeeded {
        return true;
    }
    from != to && is_open(from)
}

fn outcome_status(outcome: &TopupOutcome) -> TopupStatus {
    match outcome {
        TopupOutcome::Succeeded { .. } => TopupStatus::Succeeded,
        TopupOutcome::Failed { .. } => TopupStatus::Failed,
        TopupOutcome::RequiresAction { .. } => TopupStatus::RequiresAction,
        TopupOutcome::Canceled => TopupStatus::Canceled,
    }
}

fn outcome_payment(outcome: &TopupOutcome) -> Option<&str> {
    match outcome {
        TopupOutcome::Succeeded {
            payment_reference, ..
        }
        | TopupOutcome::RequiresAction { payment_reference } => Some(payment_reference),
        TopupOutcome::Failed {
            payment_reference, ..
        } => payment_reference.as_deref(),
        TopupOutcome::Canceled => None,
    }
}

/// PRODUCT.md: the bank asking for the customer's authentication stops the rule as
/// "action required"; every other refusal (and transient failures given up on) as failed.
fn asks_for_authentication(code: &str) -> bool {
    matches!(
        code,
        "authentication_required"
            | "payment_intent_authentication_failure"
            | "setup_intent_authentication_failure"
    )
}

/// `target − available` rounded up to the cent, at least the minimum and at most the
/// maximum top-up, and no more than is left under the cap (rounded down to the cent);
/// `None` when less than a minimum top-up is left under the cap.
fn recharge_amount(rule: &ModelRule, available: i64, recharged: i64) -> Option<i64> {
    let needed = i128::from(rule.target) - i128::from(available);
    let cent = i128::from(CENT);
    let needed = (needed + cent - 1).div_euclid(cent) * cent;
    let amount = needed.clamp(i128::from(MIN_TOPUP), i128::from(MAX_TOPUP));
    let left = (i128::from(rule.cap) - i128::from(recharged.max(0))).max(0);
    let left = left - left % cent;
    if left < i128::from(MIN_TOPUP) {
        return None;
    }
    Some(i64::try_from(amount.min(left)).unwrap())
}

/// What asking for a recharge should do, before sequence numbers.
enum Decision {
    NotDue,
    Blocked(RechargeBlocked),
    CapReached,
    Start(i64),
}

fn decide(rule: &ModelRule, available: i64, open: Option<u64>, recharged: i64, now: Ts) -> Decision {
    if available >= rule.threshold {
        return Decision::NotDue;
    }
    if !rule.enabled {
        return Decision::Blocked(RechargeBlocked::Disabled);
    }
    if let RuleStatus::InFlight(sequence) = rule.status {
        return Decision::Blocked(RechargeBlocked::InFlight { sequence });
    }
    if let Some(until) = rule.cool_down_until()
        && now < until
    {
        return Decision::Blocked(RechargeBlocked::CoolingDown { until });
    }
    let Some(amount) = recharge_amount(rule, available, recharged) else {
        return Decision::CapReached;
    };
    // A payment waiting for the customer may still take money: it blocks the next one.
    if let Some(sequence) = open {
        return Decision::Blocked(RechargeBlocked::InFlight { sequence });
    }
    Decision::Start(amount)
}

impl Model {
    /// The account's cycle window at the model's current cycle: (index, start, end).
    fn cycle_window(&self, account: &str) -> (i64, Ts, Ts) {
        let model = &self.accounts[account];
        (
            model.cycle_index,
            cycle_start(model.created_at, model.cycle_index),
            cycle_start(model.created_at, model.cycle_index + 1),
        )
    }

    /// What succeeded auto top-ups of the account brought in `[start, end)`.
    fn recharged(&self, account: &str, start: Ts, end: Ts) -> i64 {
        self.pay
            .topups
            .values()
            .filter(|topup| {
                topup.account == account
                    && topup.source == TopupSource::AutoRecharge
                    && topup.status == TopupStatus::Succeeded
                    && topup.succeeded_at.is_some_and(|at| at >= start && at < end)
            })
            .map(|topup| topup.amount)
            .sum()
    }

    /// Whether the store holds this model's payment state (rule, card, balances) for
    /// `accounts`. Serial orders of a concurrent group may explain every answer alike and
    /// still end apart (a rule switched on before or after the card it needs was removed
    /// and another adopted: each answer is the same); the order the store took is the one
    /// whose end state it holds.
    pub(crate) async fn pay_state_matches(
        &self,
        store: &SharedStore,
        accounts: &std::collections::BTreeSet<String>,
    ) -> bool {
        for id in accounts {
            let (Some(pay), Some(model)) = (self.pay.accounts.get(id), self.accounts.get(id)) else {
                continue;
            };
            let account = account_id(id);
            let profile = PaymentProfile {
                processor_customer: pay.customer.clone(),
                card: pay.card.clone(),
            };
            let agrees = matches!(store.auto_recharge(&account).await, Ok(record) if record == self.rule_record(id))
                && matches!(store.payment_profile(&account).await, Ok(stored) if stored == profile)
                && matches!(store.account(&account).await, Ok(stored) if stored.balances == model.balances());
            if !agrees {
                return false;
            }
        }
        true
    }

    fn rule_record(&self, account: &str) -> AutoRechargeRecord {
        let (_, start, end) = self.cycle_window(account);
        let recharged = Micros::new(self.recharged(account, start, end));
        match self.pay.accounts.get(account).and_then(|pay| pay.rule.as_ref()) {
            None => AutoRechargeRecord {
                account: account_id(account),
                rule: RechargeRule::restore(false, RechargeStatus::Armed, 0),
                settings: None,
                monthly_cap: Micros::new(DEFAULT_CAP),
                recharged_this_cycle: recharged,
                cycle_start: start,
                updated_at: None,
            },
            Some(rule) => AutoRechargeRecord {
                account: account_id(account),
                rule: RechargeRule::restore(rule.enabled, rule.core_status(), rule.last_sequence),
                settings: Some(
                    AutoRechargeSettings::new(
                        Micros::new(rule.threshold),
                        Micros::new(rule.target),
                        TopupLimits::default(),
                    )
                    .unwrap(),
                ),
                monthly_cap: Micros::new(rule.cap),
                recharged_this_cycle: recharged,
                cycle_start: start,
                updated_at: Some(rule.updated_at),
            },
        }
    }

    /// When the rule cannot be due before (cool-down end, end of the capped cycle).
    fn blocked_until(&self, account: &str, rule: &ModelRule) -> Option<Ts> {
        match &rule.status {
            RuleStatus::CapReached { index, .. } => {
                Some(cycle_start(self.accounts[account].created_at, index + 1))
            }
            _ => rule.cool_down_until(),
        }
    }

    fn due(&self, now: Ts, limit: usize) -> Vec<String> {
        self.pay
            .accounts
            .iter()
            .filter(|(id, pay)| {
                pay.rule.as_ref().is_some_and(|rule| {
                    rule.enabled
                        && !matches!(rule.status, RuleStatus::InFlight(_))
                        && self.blocked_until(id, rule).is_none_or(|until| until <= now)
                        && self.accounts[id.as_str()].available < rule.threshold
                        && self.pay.open_auto(id).is_none()
                })
            })
            .map(|(id, _)| id.clone())
            .take(limit.min(tollgate_store::MAX_AUTO_RECHARGE_BATCH))
            .collect()
    }

    fn open_autos(&self, limit: usize) -> Vec<TopupRecord> {
        let mut open: Vec<&ModelTopup> = self
            .pay
            .topups
            .values()
            .filter(|topup| {
                topup.source == TopupSource::AutoRecharge
                    && matches!(topup.status, TopupStatus::Pending | TopupStatus::RequiresAction)
            })
            .collect();
        open.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        open.iter()
            .take(limit.min(tollgate_store::MAX_AUTO_RECHARGE_BATCH))
            .map(|topup| topup.record())
            .collect()
    }

    /// What the recovery pass looks at: open top-ups created before `before`, oldest first.
    fn open_topups(&self, before: Ts, limit: usize) -> Vec<TopupRecord> {
        let mut open: Vec<&ModelTopup> = self
            .pay
            .topups
            .values()
            .filter(|topup| topup.is_open() && topup.created_at < before)
            .collect();
        open.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        open.iter()
            .take(limit.min(tollgate_store::MAX_RECOVERY_BATCH))
            .map(|topup| topup.record())
            .collect()
    }

    /// A payment line: holds due give their funds back first, then the line, then the
    /// attention flag follows the balance (below its floor or not).
    fn post(&mut self, account: &str, kind: TransactionKind, delta: i64, topup: &str, now: Ts) {
        let _committed = self.expire_due(account, now);
        let model = self.accounts.get_mut(account).unwrap();
        model.append(kind, delta, 0, Some(topup));
        let below = model.available + model.credit_limit.unwrap_or(0) < 0;
        if below {
            self.count("balance below its floor after money was taken back (flagged)");
        }
        self.pay.account(account).flagged = below;
    }

    pub(crate) fn apply_pay(&mut self, op: &PayOp, outcome: &PayOutcome, now: Ts) -> Check {
        match (op, outcome) {
            (PayOp::SetCustomer(account, customer), PayOutcome::Customer(observed)) => {
                self.set_customer(account, customer, observed)
            }
            (PayOp::RecordSetup(account, session), PayOutcome::Unit(observed)) => {
                self.record_setup(account, session, observed)
            }
            (PayOp::CompleteSetup(session, card), PayOutcome::Card(observed)) => {
                self.complete_setup(session, card, observed, now)
            }
            (PayOp::AdoptCard(account, card), PayOutcome::Card(observed)) => {
                if !self.accounts.contains_key(account) {
                    return expect_err(observed, not_found("account", account));
                }
                let expected = self.adopt(account, card, now);
                same("adopted card", expect_ok(observed)?, &expected)
            }
            (PayOp::RemoveCard(account), PayOutcome::Removed(observed)) => {
                self.remove_card(account, observed, now)
            }
            (PayOp::CreateTopup(topup), PayOutcome::Created(observed)) => {
                self.create_topup(topup, observed, now)
            }
            (PayOp::Link(topup, session, payment), PayOutcome::Topup(observed)) => {
                self.link(topup, session.as_deref(), payment.as_deref(), observed, now)
            }
            (PayOp::Settle(topup, news), PayOutcome::Topup(observed)) => {
                self.settle(topup, news, observed, now)
            }
            (PayOp::BeginRefund(request), PayOutcome::Refund(observed)) => {
                self.begin_refund(request, observed, now)
            }
            (PayOp::FinishRefund(refund, answer), PayOutcome::Refunded(observed)) => {
                self.finish_refund(refund, answer, observed, now)
            }
            (PayOp::Reconcile(reference, total), PayOutcome::Reconciled(observed)) => {
                self.reconcile(reference, total.get(), observed, now)
            }
            (PayOp::Dispute(news), PayOutcome::Dispute(observed)) => self.dispute(news, observed, now),
            (PayOp::Event(id, _), PayOutcome::Event(observed)) => {
                let new = self.pay.events.insert(id.clone());
                if !new {
                    self.count("webhook event delivered again (deduplicated)");
                }
                same("event recorded for the first time", *expect_ok(observed)?, new)
            }
            (PayOp::SetRule(account, change), PayOutcome::Rule(observed)) => {
                self.set_rule(account, change, observed, now)
            }
            (PayOp::Begin(account), PayOutcome::Begin(observed)) => self.begin(account, observed, now),
            (PayOp::Due(limit, at), PayOutcome::Due(observed)) => {
                let got: Vec<String> = expect_ok(observed)?.iter().map(ToString::to_string).collect();
                same("due auto top-ups", got, self.due(*at, *limit))
            }
            (PayOp::OpenAuto(limit), PayOutcome::Open(observed)) => same(
                "open auto top-ups",
                expect_ok(observed)?,
                &self.open_autos(*limit),
            ),
            (PayOp::OpenTopups(before, limit), PayOutcome::Open(observed)) => same(
                "open top-ups",
                expect_ok(observed)?,
                &self.open_topups(*before, *limit),
            ),
            (PayOp::Find(reference), PayOutcome::Found(observed)) => same(
                &format!("top-up found by {reference:?}"),
                expect_ok(observed)?,
                &self.pay.find(reference).map(ModelTopup::record),
            ),
            (PayOp::Profile(account), PayOutcome::Profile(observed)) => {
                if !self.accounts.contains_key(account) {
                    return expect_err(observed, not_found("account", account));
                }
                let pay = self.pay.accounts.get(account).cloned().unwrap_or_default();
                same(
                    "payment profile",
                    expect_ok(observed)?,
                    &PaymentProfile {
                        processor_customer: pay.customer,
                        card: pay.card,
                    },
                )
            }
            (op, outcome) => Err(format!("outcome {outcome:?} does not belong to {op:?}")),
        }
    }

    // ----- cards -----------------------------------------------------------

    fn set_customer(&mut self, account: &str, customer: &str, observed: &StoreResult<String>) -> Check {
        if !self.accounts.contains_key(account) {
            return expect_err(observed, not_found("account", account));
        }
        let taken = self
            .pay
            .accounts
            .iter()
            .any(|(id, pay)| id != account && pay.customer.as_deref() == Some(customer));
        if taken {
            return expect_kind(observed, "conflict");
        }
        let pay = self.pay.account(account);
        if pay.customer.is_some() && pay.customer.as_deref() != Some(customer) {
            self.count("second processor customer refused: the first one stays");
        }
        let pay = self.pay.account(account);
        let recorded = pay.customer.get_or_insert_with(|| customer.to_owned()).clone();
        same("processor customer", expect_ok(observed)?, &recorded)
    }

    fn record_setup(&mut self, account: &str, session: &str, observed: &StoreResult<()>) -> Check {
        if !self.accounts.contains_key(account) {
            return expect_err(observed, not_found("account", account));
        }
        match self.pay.setups.get(session) {
            Some((owner, _)) if owner != account => expect_kind(observed, "conflict"),
            Some(_) => expect_ok(observed).map(|_| ()),
            None => {
                self.pay
                    .setups
                    .insert(session.to_owned(), (account.to_owned(), None));
                expect_ok(observed).map(|_| ())
            }
        }
    }

    fn complete_setup(
        &mut self,
        session: &str,
        card: &CardRecord,
        observed: &StoreResult<CardSetupResult>,
        now: Ts,
    ) -> Check {
        let Some((account, confirmed)) = self.pay.setups.get(session).cloned() else {
            return expect_err(observed, not_found("card setup", session));
        };
        if confirmed.is_some() {
            self.count("card setup confirmed again (replayed return or webhook)");
            let current = self.pay.accounts.get(&account).and_then(|pay| pay.card.clone());
            return same(
                "replayed card setup",
                expect_ok(observed)?,
                &CardSetupResult {
                    applied: false,
                    replaced: None,
                    card: current,
                },
            );
        }
        self.pay.setups.insert(
            session.to_owned(),
            (account.clone(), Some(card.processor_id.clone())),
        );
        let expected = self.adopt(&account, card, now);
        same("card setup", expect_ok(observed)?, &expected)
    }

    fn adopt(&mut self, account: &str, card: &CardRecord, now: Ts) -> CardSetupResult {
        let pay = self.pay.account(account);
        if pay.card.as_ref().map(|current| &current.processor_id) == Some(&card.processor_id) {
            return CardSetupResult {
                applied: false,
                replaced: None,
                card: pay.card.clone(),
            };
        }
        let replaced = pay.card.replace(card.clone());
        // A new card may succeed where the old one failed: the rule arms again.
        let mut rearmed = false;
        if let Some(rule) = pay.rule.as_mut() {
            let before = rule.status.clone();
            rule.rearm();
            if rule.status != before {
                rule.updated_at = now;
                rearmed = true;
            }
        }
        if rearmed {
            self.count("new card re-armed a stopped rule");
        }
        CardSetupResult {
            applied: true,
            replaced,
            card: Some(card.clone()),
        }
    }

    fn remove_card(&mut self, account: &str, observed: &StoreResult<Option<CardRecord>>, now: Ts) -> Check {
        if !self.accounts.contains_key(account) {
            return expect_err(observed, not_found("account", account));
        }
        let pay = self.pay.account(account);
        let removed = pay.card.take();
        if removed.is_some()
            && let Some(rule) = pay.rule.as_mut()
            && rule.enabled
        {
            // Without a card nothing can be charged: Auto Top-Up goes off with it.
            rule.enabled = false;
            rule.updated_at = now;
        }
        same("removed card", expect_ok(observed)?, &removed)
    }

    // ----- top-ups ---------------------------------------------------------

    fn create_topup(
        &mut self,
        topup: &NewTopup,
        observed: &StoreResult<Idempotent<TopupRecord>>,
        now: Ts,
    ) -> Check {
        if topup.source == TopupSource::AutoRecharge {
            return expect_kind(observed, "conflict");
        }
        let account = topup.account.as_str();
        let amount = topup.amount.get().get();
        let key = (account.to_owned(), topup.idempotency_key.as_str().to_owned());
        if let Some(id) = self.pay.topup_keys.get(&key) {
            let first = &self.pay.topups[id];
            if first.fingerprint != Fingerprint::Topup(amount) {
                return expect_err(observed, StoreError::IdempotencyConflict { key: key.1 });
            }
            let record = first.record();
            if first.source != topup.source {
                self.count("top-up replayed with another source (same top-up)");
            }
            let replay = expect_ok(observed)?;
            same("replayed flag", replay.replayed, true)?;
            return same("replayed top-up", &replay.value, &record);
        }
        if !self.accounts.contains_key(account) {
            return expect_err(observed, not_found("account", account));
        }
        let created = expect_ok(observed)?;
        same("replayed flag", created.replayed, false)?;
        let id = created.value.id.clone();
        if self.pay.topups.contains_key(&id) {
            return Err(format!("top-up id {id} reused"));
        }
        let model = ModelTopup {
            id: id.clone(),
            account: account.to_owned(),
            amount,
            source: topup.source,
            status: match topup.source {
                TopupSource::HostedPage => TopupStatus::RequiresPaymentMethod,
                _ => TopupStatus::Pending,
            },
            key: key.1.clone(),
            fingerprint: Fingerprint::Topup(amount),
            checkout_session: None,
            payment_reference: None,
            charge_reference: None,
            card_brand: None,
            card_last4: None,
            failure_code: None,
            failure_message: None,
            credited_transaction: None,
            balances_after_credit: None,
            refunded: 0,
            disputed: 0,
            processor_refunded: 0,
            created_at: now,
            updated_at: now,
            succeeded_at: None,
            recharge_sequence: None,
        };
        let record = model.record();
        self.pay.topups.insert(id.clone(), model);
        self.pay.topup_keys.insert(key, id);
        self.pay.account(account);
        same("new top-up", &created.value, &record)
    }

    fn link(
        &mut self,
        id: &str,
        session: Option<&str>,
        payment: Option<&str>,
        observed: &StoreResult<TopupRecord>,
        now: Ts,
    ) -> Check {
        let Some(topup) = self.pay.topups.get(id) else {
            return expect_err(observed, not_found("top-up", id));
        };
        for (stored, given) in [
            (&topup.checkout_session, session),
            (&topup.payment_reference, payment),
        ] {
            if let (Some(stored), Some(given)) = (stored, given)
                && stored != given
            {
                return expect_kind(observed, "conflict");
            }
        }
        let taken = self.pay.topups.values().any(|other| {
            other.id != id
                && ((session.is_some() && other.checkout_session.as_deref() == session)
                    || (payment.is_some() && other.payment_reference.as_deref() == payment))
        });
        if taken {
            return expect_kind(observed, "conflict");
        }
        let topup = self.pay.topups.get_mut(id).unwrap();
        if topup.checkout_session.is_none() {
            topup.checkout_session = session.map(str::to_owned);
        }
        if topup.payment_reference.is_none() {
            topup.payment_reference = payment.map(str::to_owned);
        }
        topup.updated_at = now;
        same("linked top-up", expect_ok(observed)?, &topup.record())
    }

    fn settle(
        &mut self,
        id: &str,
        news: &TopupOutcome,
        observed: &StoreResult<TopupRecord>,
        now: Ts,
    ) -> Check {
        let Some(mut topup) = self.pay.topups.get(id).cloned() else {
            return expect_err(observed, not_found("top-up", id));
        };
        let next = outcome_status(news);
        let given = outcome_payment(news);
        if let (Some(given), Some(stored)) = (given, &topup.payment_reference)
            && given != stored
        {
            self.count("news naming another payment refused (conflict)");
            return expect_kind(observed, "conflict");
        }
        let from = topup.status;
        if !may_become(from, next) {
            self.count(match (from, next) {
                (TopupStatus::Succeeded, TopupStatus::Succeeded) => "success reported again: credited once",
                (TopupStatus::Succeeded, _) => "late failure after a success: still credited",
                _ => "news that may no longer change the top-up",
            });
            return same("unchanged top-up", expect_ok(observed)?, &topup.record());
        }
        if let Some(given) = given
            && topup.payment_reference.is_none()
            && self
                .pay
                .topups
                .values()
                .any(|other| other.id != id && other.payment_reference.as_deref() == Some(given))
        {
            return expect_kind(observed, "conflict");
        }
        if let Some(given) = given {
            topup.payment_reference = Some(given.to_owned());
        }
        topup.status = next;
        topup.updated_at = now;
        match news {
            TopupOutcome::Succeeded {
                charge_reference,
                card_brand,
                card_last4,
                ..
            } => {
                topup.charge_reference = charge_reference.clone().or(topup.charge_reference.take());
                topup.card_brand = card_brand.clone().or(topup.card_brand.take());
                topup.card_last4 = card_last4.clone().or(topup.card_last4.take());
                topup.failure_code = None;
                topup.failure_message = None;
                topup.succeeded_at = Some(now);
                let kind = match topup.source {
                    TopupSource::AutoRecharge => TransactionKind::AutoRecharge,
                    _ => TransactionKind::Topup,
                };
                self.post(&topup.account, kind, topup.amount, &topup.id, now);
                let record = expect_ok(observed)?;
                let Some(credited) = record.credited_transaction.clone() else {
                    return Err(format!("top-up {id} succeeded without a credit: {record:?}"));
                };
                if self
                    .pay
                    .topups
                    .values()
                    .any(|other| other.credited_transaction.as_ref() == Some(&credited))
                {
                    return Err(format!("credit transaction {credited} is another top-up's"));
                }
                topup.credited_transaction = Some(credited);
                topup.balances_after_credit = Some(self.accounts[&topup.account].balances());
                self.count(match from {
                    TopupStatus::Failed => "success after a failure: credited",
                    TopupStatus::Canceled => "success after a cancellation: credited",
                    TopupStatus::RequiresAction => "success after requires_action: credited",
                    _ => "top-up credited",
                });
            }
            TopupOutcome::Failed { code, message, .. } => {
                topup.failure_code = Some(code.clone());
                topup.failure_message = Some(message.clone());
            }
            TopupOutcome::RequiresAction { .. } | TopupOutcome::Canceled => {}
        }
        if topup.source == TopupSource::AutoRecharge {
            self.resolve_rule(&topup, from, news, now);
        }
        let record = topup.record();
        self.pay.topups.insert(id.to_owned(), topup);
        same("settled top-up", expect_ok(observed)?, &record)
    }

    /// An auto top-up's first outcome resolves its rule, when it is the recharge in flight.
    fn resolve_rule(&mut self, topup: &ModelTopup, from: TopupStatus, news: &TopupOutcome, now: Ts) {
        let (index, _, _) = self.cycle_window(&topup.account);
        let start_cap = self.pay.start_caps.get(&topup.id).copied();
        let Some(rule) = self.pay.account(&topup.account).rule.as_mut() else {
            return;
        };
        let late = matches!(news, TopupOutcome::Succeeded { .. })
            && matches!(from, TopupStatus::Failed | TopupStatus::Canceled);
        if late {
            rule.late_success_in = Some(index);
        }
        // A recharge in flight is resolved whatever the customer changed meanwhile: one
        // started under a higher cap may end up over the one in force now.
        if matches!(news, TopupOutcome::Succeeded { .. }) && start_cap.is_some_and(|cap| cap > rule.cap) {
            rule.cap_lowered_in = Some(index);
        }
        if topup.recharge_sequence.map(RuleStatus::InFlight) != Some(rule.status.clone()) {
            if late {
                self.count("auto top-up succeeded after the rule gave up on it");
            }
            return;
        }
        rule.status = match news {
            TopupOutcome::Succeeded { .. } => RuleStatus::Armed,
            TopupOutcome::Failed { code, .. } if asks_for_authentication(code) => {
                RuleStatus::ActionRequired {
                    reason: code.clone(),
                    at: now,
                }
            }
            TopupOutcome::Failed { code, .. } => RuleStatus::Failed {
                reason: code.clone(),
                at: now,
            },
            TopupOutcome::RequiresAction { .. } => RuleStatus::ActionRequired {
                reason: "authentication_required".to_owned(),
                at: now,
            },
            TopupOutcome::Canceled => RuleStatus::Failed {
                reason: "canceled".to_owned(),
                at: now,
            },
        };
        rule.updated_at = now;
        let what = match &rule.status {
            RuleStatus::Armed => "rule resolved: succeeded, armed",
            RuleStatus::ActionRequired { .. } => "rule resolved: action required, cooling down",
            _ => "rule resolved: failed, cooling down",
        };
        self.count(what);
    }

    // ----- refunds and disputes --------------------------------------------

    fn begin_refund(
        &mut self,
        request: &RefundRequest,
        observed: &StoreResult<Idempotent<RefundRecord>>,
        now: Ts,
    ) -> Check {
        let requested = request.amount.map(Micros::get);
        let key = (
            request.topup_id.clone(),
            request.idempotency_key.as_str().to_owned(),
        );
        if let Some(id) = self.pay.refund_keys.get(&key) {
            let first = &self.pay.refunds[id];
            if first.requested != requested || first.reason != request.reason {
                return expect_err(observed, StoreError::IdempotencyConflict { key: key.1 });
            }
            let replay = expect_ok(observed)?;
            same("replayed flag", replay.replayed, true)?;
            return same("replayed refund", &replay.value, &first.record());
        }
        let Some(topup) = self.pay.topups.get(&request.topup_id).cloned() else {
            return expect_err(observed, not_found("top-up", &request.topup_id));
        };
        let left = (topup.amount - topup.refunded - topup.disputed).max(0);
        if topup.status != TopupStatus::Succeeded {
            return expect_err(
                observed,
                StoreError::InvalidRefund(tollgate_core::InvalidRefund::NotPaid),
            );
        }
        if let Some(amount) = requested
            && (amount <= 0 || amount % CENT != 0)
        {
            return expect_err(
                observed,
                StoreError::InvalidRefund(tollgate_core::InvalidRefund::Amount),
            );
        }
        let amount = requested.unwrap_or(left);
        if amount > left || amount <= 0 {
            self.count("refund above what is left refused");
            return expect_err(
                observed,
                StoreError::InvalidRefund(tollgate_core::InvalidRefund::ExceedsRefundable(Micros::new(left))),
            );
        }
        self.post(&topup.account, TransactionKind::Refund, -amount, &topup.id, now);
        let started = expect_ok(observed)?;
        same("replayed flag", started.replayed, false)?;
        let value = &started.value;
        if self.pay.refunds.contains_key(&value.id)
            || self
                .pay
                .refunds
                .values()
                .any(|other| other.taken_transaction == value.taken_transaction)
        {
            return Err(format!("refund id or transaction reused: {value:?}"));
        }
        let model = ModelRefund {
            id: value.id.clone(),
            topup: topup.id.clone(),
            account: topup.account.clone(),
            amount,
            state: RefundState::Pending,
            processor_refund: None,
            requested,
            reason: request.reason.clone(),
            key: Some(key.1.clone()),
            taken_transaction: value.taken_transaction.clone(),
            balances_after: self.accounts[&topup.account].balances(),
            created_at: now,
        };
        let record = model.record();
        self.pay.refunds.insert(model.id.clone(), model);
        self.pay.refund_keys.insert(key, value.id.clone());
        let stored = self.pay.topups.get_mut(&topup.id).unwrap();
        stored.refunded += amount;
        stored.updated_at = now;
        same("new refund", value, &record)
    }

    fn finish_refund(
        &mut self,
        id: &str,
        answer: &Result<String, String>,
        observed: &StoreResult<RefundRecord>,
        now: Ts,
    ) -> Check {
        let Some(refund) = self.pay.refunds.get(id).cloned() else {
            return expect_err(observed, not_found("refund", id));
        };
        if refund.state != RefundState::Pending {
            self.count("refund answer heard again: nothing changes");
            return same("finished refund", expect_ok(observed)?, &refund.record());
        }
        match answer {
            Ok(processor_refund) => {
                if self
                    .pay
                    .refunds
                    .values()
                    .any(|other| other.id != id && other.processor_refund.as_ref() == Some(processor_refund))
                {
                    return expect_kind(observed, "conflict");
                }
                let refund = self.pay.refunds.get_mut(id).unwrap();
                refund.state = RefundState::Succeeded;
                refund.processor_refund = Some(processor_refund.clone());
            }
            Err(_) => {
                self.post(
                    &refund.account,
                    TransactionKind::Refund,
                    refund.amount,
                    &refund.topup,
                    now,
                );
                self.pay.refunds.get_mut(id).unwrap().state = RefundState::Failed;
                let topup = self.pay.topups.get_mut(&refund.topup).unwrap();
                topup.refunded -= refund.amount;
                topup.updated_at = now;
                // The refused refund no longer hides what the processor said it refunded:
                // the rest of its largest total is a dashboard refund, recorded now.
                let missing = (topup.processor_refunded - topup.refunded).min(topup.amount - topup.refunded);
                let hidden = topup.status == TopupStatus::Succeeded && missing > 0;
                if hidden {
                    topup.refunded += missing;
                }
                self.count("refund refused by the processor: money given back");
                if hidden {
                    self.post(
                        &refund.account,
                        TransactionKind::Refund,
                        -missing,
                        &refund.topup,
                        now,
                    );
                    self.count("dashboard refund hidden by a refused refund recorded");
                }
            }
        }
        same(
            "finished refund",
            expect_ok(observed)?,
            &self.pay.refunds[id].record(),
        )
    }

    /// The processor says `total` was refunded in all: what the store has not recorded
    /// (refunds made in the processor's dashboard) is taken back, within what is left.
    fn reconcile(
        &mut self,
        reference: &TopupReference,
        total: i64,
        observed: &StoreResult<Option<RefundRecord>>,
        now: Ts,
    ) -> Check {
        let Some(topup) = self.pay.find(reference).cloned() else {
            return same("reconciled refund", expect_ok(observed)?, &None);
        };
        // Kept whatever is recorded now: the largest total is what a refund of ours
        // refused later is measured against.
        if total < topup.refunded {
            self.count("processor total below the store's (a refund of ours pending)");
        }
        let heard = &mut self.pay.topups.get_mut(&topup.id).unwrap().processor_refunded;
        *heard = (*heard).max(total);
        // What the processor refunded is a fact: at most what the payment brought, whatever
        // the store believes is disputed (that news may be stale: a dispute won meanwhile).
        let missing = (total - topup.refunded).min(topup.amount - topup.refunded);
        if topup.status != TopupStatus::Succeeded || missing <= 0 {
            return same("reconciled refund", expect_ok(observed)?, &None);
        }
        self.post(&topup.account, TransactionKind::Refund, -missing, &topup.id, now);
        let Some(value) = expect_ok(observed)? else {
            return Err(format!(
                "the processor refunded {} of top-up {} but the store recorded nothing",
                Micros::new(total),
                topup.id
            ));
        };
        if self.pay.refunds.contains_key(&value.id) {
            return Err(format!("refund id {} reused", value.id));
        }
        let model = ModelRefund {
            id: value.id.clone(),
            topup: topup.id.clone(),
            account: topup.account.clone(),
            amount: missing,
            state: RefundState::Succeeded,
            processor_refund: None,
            requested: None,
            reason: "refunded in the payment processor's dashboard".to_owned(),
            key: None,
            taken_transaction: value.taken_transaction.clone(),
            balances_after: self.accounts[&topup.account].balances(),
            created_at: now,
        };
        let record = model.record();
        self.pay.refunds.insert(model.id.clone(), model);
        let stored = self.pay.topups.get_mut(&topup.id).unwrap();
        stored.refunded += missing;
        stored.updated_at = now;
        self.count("refund made in the processor's dashboard recorded");
        same("reconciled refund", value, &record)
    }

    fn dispute(
        &mut self,
        news: &DisputeNews,
        observed: &StoreResult<Option<DisputeApplied>>,
        now: Ts,
    ) -> Check {
        let found = news
            .payment_reference
            .as_ref()
            .and_then(|payment| self.pay.find(&TopupReference::Payment(payment.clone())))
            .or_else(|| {
                self.pay
                    .find(&TopupReference::Charge(news.charge_reference.clone()))
            })
            .cloned();
        let Some(topup) = found else {
            self.count("dispute news about no known top-up (yet)");
            return same("dispute applied", expect_ok(observed)?.as_ref(), None);
        };
        let recorded = self.pay.disputes.get(&news.dispute).cloned();
        if let Some(recorded) = &recorded
            && recorded.topup != topup.id
        {
            return expect_kind(observed, "conflict");
        }
        enum Move {
            Nothing,
            TakeBack(i64),
            GiveBack(i64),
            StatusOnly,
        }
        let step = match (recorded.as_ref().map(|recorded| recorded.status), news.status) {
            (None, DisputeStatus::Open | DisputeStatus::Lost) => Move::TakeBack(news.amount.get()),
            // Won before we heard it was opened: the money went and came back.
            (None, DisputeStatus::Won) => Move::StatusOnly,
            (Some(DisputeStatus::Open), DisputeStatus::Won) => {
                Move::GiveBack(recorded.as_ref().unwrap().amount)
            }
            (Some(DisputeStatus::Open), DisputeStatus::Lost) => Move::StatusOnly,
            _ => Move::Nothing,
        };
        let applied = expect_ok(observed)?.as_ref().ok_or_else(|| {
            format!(
                "dispute {} about top-up {} was not applied",
                news.dispute, topup.id
            )
        })?;
        let moved = match step {
            Move::Nothing => {
                self.count("dispute news that changes nothing (duplicate or late)");
                same("dispute line", &applied.line, &None)?;
                return same("disputed top-up", &applied.topup, &topup.record());
            }
            Move::StatusOnly => None,
            Move::TakeBack(amount) => Some(-amount),
            Move::GiveBack(amount) => Some(amount),
        };
        if let Some(delta) = moved {
            self.post(&topup.account, TransactionKind::Dispute, delta, &topup.id, now);
            self.count(if delta < 0 {
                "dispute took money back"
            } else {
                "dispute won: money returned"
            });
        }
        match self.pay.disputes.get_mut(&news.dispute) {
            Some(dispute) => dispute.status = news.status,
            None => {
                self.pay.disputes.insert(
                    news.dispute.clone(),
                    ModelDispute {
                        topup: topup.id.clone(),
                        status: news.status,
                        amount: news.amount.get(),
                    },
                );
            }
        }
        let stored = self.pay.topups.get_mut(&topup.id).unwrap();
        stored.disputed -= moved.unwrap_or(0);
        stored.updated_at = now;
        let record = stored.record();
        same("disputed top-up", &applied.topup, &record)?;
        let model = &self.accounts[&topup.account];
        match (&applied.line, moved) {
            (None, None) => Ok(()),
            (Some(line), Some(_)) => {
                same(
                    "dispute line",
                    journal_line(line),
                    model.journal.last().unwrap().clone(),
                )?;
                same("dispute line sequence", line.sequence, model.sequence())?;
                same("dispute line created_at", line.created_at, now)
            }
            (line, _) => Err(format!("dispute line {line:?}, model moved {moved:?}")),
        }
    }

    // ----- Auto Top-Up -----------------------------------------------------

    fn set_rule(
        &mut self,
        account: &str,
        change: &AutoRechargeChange,
        observed: &StoreResult<AutoRechargeRecord>,
        now: Ts,
    ) -> Check {
        if !self.accounts.contains_key(account) {
            return expect_err(observed, not_found("account", account));
        }
        let (index, _, _) = self.cycle_window(account);
        let pay = self.pay.account(account);
        if change.enabled && pay.card.is_none() {
            return expect_err(observed, StoreError::NoPaymentMethod);
        }
        let current = pay.rule.clone();
        let cap = change
            .monthly_cap
            .map(Micros::get)
            .or(current.as_ref().map(|rule| rule.cap))
            .unwrap_or(DEFAULT_CAP);
        if cap < 0 || cap % CENT != 0 {
            return expect_kind(observed, "database");
        }
        let mut next = current.clone().unwrap_or(ModelRule {
            enabled: false,
            status: RuleStatus::Armed,
            last_sequence: 0,
            threshold: 0,
            target: 0,
            cap: DEFAULT_CAP,
            updated_at: now,
            cap_lowered_in: None,
            late_success_in: None,
            starts_this_crossing: 0,
        });
        let (threshold, target) = (change.settings.threshold().get(), change.settings.target().get());
        let settings_changed = current
            .as_ref()
            .is_none_or(|rule| (rule.threshold, rule.target, rule.cap) != (threshold, target, cap));
        if current.as_ref().is_some_and(|rule| cap < rule.cap) {
            next.cap_lowered_in = Some(index);
        }
        (next.threshold, next.target, next.cap) = (threshold, target, cap);
        if settings_changed {
            next.rearm();
        }
        match (change.enabled, next.enabled) {
            (true, true) => {}
            (true, false) => {
                next.enabled = true;
                next.rearm();
            }
            (false, _) => next.enabled = false,
        }
        let changed = current.as_ref().is_none_or(|rule| !rule.same_state(&next));
        if changed {
            if matches!(next.status, RuleStatus::InFlight(_)) {
                self.count("rule changed while a recharge is in flight");
            }
            next.updated_at = now;
            self.pay.account(account).rule = Some(next);
        } else {
            self.count("rule saved unchanged");
        }
        same("auto top-up", expect_ok(observed)?, &self.rule_record(account))
    }

    fn begin(&mut self, account: &str, observed: &StoreResult<AutoRechargeStart>, now: Ts) -> Check {
        if !self.accounts.contains_key(account) {
            return expect_err(observed, not_found("account", account));
        }
        // Holds whose time ran out give their funds back first, whatever is decided.
        let undo = self.expire_due(account, now);
        let Some(mut rule) = self.pay.accounts.get(account).and_then(|pay| pay.rule.clone()) else {
            return same("begin", expect_ok(observed)?, &AutoRechargeStart::NotDue);
        };
        let available = self.accounts[account].available;
        let (index, start, end) = self.cycle_window(account);
        let recharged = self.recharged(account, start, end);
        let open = self
            .pay
            .open_auto(account)
            .and_then(|topup| topup.recharge_sequence);
        let amount = match decide(&rule, available, open, recharged, now) {
            Decision::NotDue => return same("begin", expect_ok(observed)?, &AutoRechargeStart::NotDue),
            Decision::Blocked(blocked) => {
                return same(
                    "begin",
                    expect_ok(observed)?,
                    &AutoRechargeStart::Blocked(blocked),
                );
            }
            Decision::CapReached => {
                if rule.status != (RuleStatus::CapReached { index, start }) {
                    rule.status = RuleStatus::CapReached { index, start };
                    rule.updated_at = now;
                    self.pay.account(account).rule = Some(rule);
                }
                self.count("auto top-up stopped by the monthly cap");
                return same(
                    "begin",
                    expect_ok(observed)?,
                    &AutoRechargeStart::Blocked(RechargeBlocked::CapReached),
                );
            }
            Decision::Start(amount) => amount,
        };
        // Keys a customer's own top-ups took are skipped (a bounded number of them).
        let mut sequence = rule.last_sequence + 1;
        while self
            .pay
            .topup_keys
            .contains_key(&(account.to_owned(), format!("auto-recharge-{sequence}")))
        {
            self.count("recharge sequence skipped: a customer's top-up took its key");
            if sequence - rule.last_sequence >= MAX_SKIPPED_SEQUENCES {
                self.undo(undo);
                return expect_kind(observed, "database");
            }
            sequence += 1;
        }
        let Ok(AutoRechargeStart::Started(started)) = observed else {
            return Err(format!(
                "expected an auto top-up of {} to start (available {}, threshold {}, recharged {recharged}, cap {}), \
                 store says {observed:?}",
                Micros::new(amount),
                Micros::new(available),
                Micros::new(rule.threshold),
                Micros::new(rule.cap)
            ));
        };
        // The invariants, stated on their own (the model's decision says the same).
        let invariant = |holds: bool, what: &str| {
            if holds {
                Ok(())
            } else {
                Err(format!("auto top-up {} started {what}", started.id))
            }
        };
        invariant(rule.enabled, "while Auto Top-Up is off")?;
        invariant(self.pay.open_auto(account).is_none(), "while another is open")?;
        invariant(
            !matches!(rule.status, RuleStatus::InFlight(_)),
            "while one is in flight",
        )?;
        invariant(
            rule.cool_down_until().is_none_or(|until| now >= until),
            "while cooling down",
        )?;
        invariant(available < rule.threshold, "at or above the threshold")?;
        invariant(recharged + amount <= rule.cap, "beyond the monthly cap")?;
        invariant(
            (MIN_TOPUP..=MAX_TOPUP).contains(&amount) && amount % CENT == 0,
            "for an amount that is not a valid top-up",
        )?;
        let id = started.id.clone();
        if self.pay.topups.contains_key(&id) {
            return Err(format!("top-up id {id} reused"));
        }
        let key = format!("auto-recharge-{sequence}");
        let model = ModelTopup {
            id: id.clone(),
            account: account.to_owned(),
            amount,
            source: TopupSource::AutoRecharge,
            status: TopupStatus::Pending,
            key: key.clone(),
            fingerprint: Fingerprint::Auto(sequence, amount),
            checkout_session: None,
            payment_reference: None,
            charge_reference: None,
            card_brand: None,
            card_last4: None,
            failure_code: None,
            failure_message: None,
            credited_transaction: None,
            balances_after_credit: None,
            refunded: 0,
            disputed: 0,
            processor_refunded: 0,
            created_at: now,
            updated_at: now,
            succeeded_at: None,
            recharge_sequence: Some(sequence),
        };
        let record = model.record();
        self.pay.topups.insert(id.clone(), model);
        self.pay.start_caps.insert(id.clone(), rule.cap);
        self.pay.topup_keys.insert((account.to_owned(), key), id);
        rule.status = RuleStatus::InFlight(sequence);
        rule.last_sequence = sequence;
        rule.updated_at = now;
        rule.starts_this_crossing += 1;
        if recharged + amount == rule.cap {
            self.count("auto top-up cut to what is left under the cap");
        }
        self.pay.account(account).rule = Some(rule);
        self.count("auto top-up started");
        same("started auto top-up", started.as_ref(), &record)
    }
}

// ===========================================================================
// The simulated processor
// ===========================================================================

/// Where a payment stands at the processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PState {
    Open,
    RequiresAction,
    Succeeded,
    Failed,
    Canceled,
}

#[derive(Debug)]
struct Payment {
    /// The top-ups that asked for this payment (its idempotency key): exactly one,
    /// unless the store handed out one recharge key twice.
    topups: Vec<String>,
    amount: i64,
    source: TopupSource,
    payment: String,
    charge: String,
    state: PState,
    /// Everything the processor said about it, in order, with its event id.
    news: Vec<(String, TopupOutcome)>,
    /// Refunds the processor made.
    refunded: i64,
    /// `charge.refunded` news: the refunded total after each refund, with its event id.
    refund_news: Vec<(String, i64)>,
    /// A dispute is open or was lost.
    disputed: bool,
}

#[derive(Debug)]
struct ProcessorDispute {
    payment: String,
    amount: i64,
    status: DisputeStatus,
    news: Vec<(String, DisputeStatus)>,
}

/// The card processor: it charges once per idempotency key and tells about it.
#[derive(Debug, Default)]
pub(crate) struct Processor {
    next: u64,
    /// By processor idempotency key.
    payments: BTreeMap<String, Payment>,
    of_topup: HashMap<String, String>,
    refunds: HashMap<String, Result<String, String>>,
    disputes: BTreeMap<String, ProcessorDispute>,
    /// Webhook events the store acknowledged (answered 2xx): never sent again. Every
    /// other event is sent until it is.
    acked: HashSet<String>,
}

impl Processor {
    fn fresh(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    /// Learns the top-ups the store recorded since the last step.
    pub(crate) fn sync(&mut self, model: &Model) {
        for topup in model.pay.topups.values() {
            if self.of_topup.contains_key(&topup.id) {
                continue;
            }
            // The key Billing sends: derived from the record (the recharge sequence for an
            // auto top-up), so a retry after any crash asks for the same charge.
            let key = match topup.recharge_sequence {
                Some(sequence) => format!("tollgate-recharge-{}-{sequence}", topup.account),
                None => format!("tollgate-topup-{}", topup.id),
            };
            self.of_topup.insert(topup.id.clone(), key.clone());
            if let Some(payment) = self.payments.get_mut(&key) {
                payment.topups.push(topup.id.clone());
                continue;
            }
            let number = self.fresh("");
            self.payments.insert(
                key,
                Payment {
                    topups: vec![topup.id.clone()],
                    amount: topup.amount,
                    source: topup.source,
                    payment: format!("pi_{number}"),
                    charge: format!("ch_{number}"),
                    state: PState::Open,
                    news: Vec::new(),
                    refunded: 0,
                    refund_news: Vec::new(),
                    disputed: false,
                },
            );
        }
    }

    fn payment_of(&self, topup: &str) -> Option<&Payment> {
        self.payments.get(self.of_topup.get(topup)?)
    }

    /// Money the processor took: each payment once.
    fn charged(&self) -> i64 {
        self.payments
            .values()
            .filter(|payment| payment.state == PState::Succeeded)
            .map(|payment| payment.amount)
            .sum()
    }

    fn disputed(&self, payment: &str) -> i64 {
        self.disputes
            .values()
            .filter(|dispute| dispute.payment == payment && dispute.status != DisputeStatus::Won)
            .map(|dispute| dispute.amount)
            .sum()
    }
}

fn event_type(news: &TopupOutcome) -> &'static str {
    match news {
        TopupOutcome::Succeeded { .. } => "payment_intent.succeeded",
        TopupOutcome::Failed { .. } => "payment_intent.payment_failed",
        TopupOutcome::RequiresAction { .. } => "payment_intent.requires_action",
        TopupOutcome::Canceled => "payment_intent.canceled",
    }
}

// ===========================================================================
// Steps
// ===========================================================================

/// A payment step whose operations depend on the processor or on earlier answers, so
/// they are chosen while it runs (and logged).
#[derive(Clone, Debug)]
pub(crate) enum PayStep {
    /// Operations one after the other (a flow: record then confirm, …).
    Sequence(Vec<Op>),
    /// The processor decides an open payment; the answer reaches the store at once or not.
    Decide,
    /// Deliver news the processor sent: the latest, or an older one again.
    Deliver { concurrent: bool },
    /// The processor answers a refund (or an answer is heard again).
    RefundAnswer,
    /// The processor opens or closes a dispute.
    DisputeProcessor,
    /// Deliver dispute news.
    DisputeNews { concurrent: bool },
    /// Refunds made in the processor's dashboard (`charge.refunded` follows).
    DashboardRefund,
    /// Deliver `charge.refunded` news: the latest total, or an older one again.
    RefundNews,
    /// Auto Top-Up workers: resume open recharges, find the due ones, begin, charge
    /// (or crash after beginning: the next pass resumes).
    Workers { count: usize, resume: bool, crash: bool },
    /// The clock moves to a cool-down's end or a cycle boundary (just before, on it,
    /// just after), then workers run.
    AdvanceThenWorkers { by: Duration, count: usize },
    /// One setup session confirmed by the return and the webhook at once.
    SetupRace {
        account: String,
        session: String,
        cards: Vec<CardRecord>,
    },
    /// End of the seed: restart, resume, recovery and webhook retries until every
    /// answer the processor has given reached the store.
    Drain,
}

fn money(rng: &mut StdRng, low_dollars: i64, high_dollars: i64) -> i64 {
    rng.random_range(low_dollars * 100..=high_dollars * 100) * CENT
}

impl Sim {
    pub(crate) fn payments_active(&self) -> bool {
        self.model.pay.active()
    }

    /// Whether the store applied the success of every top-up paid by processor payment
    /// `key` (refunds and disputes come long after a payment, when the return, the
    /// webhook or the recovery pass has long told the store).
    fn store_knows_success(&self, key: &str) -> bool {
        self.processor.payments[key]
            .topups
            .iter()
            .all(|topup| self.model.pay.topups[topup].status == TopupStatus::Succeeded)
    }

    /// Whether the store has a refund of processor payment `key` waiting for its answer.
    fn refund_pending(&self, key: &str) -> bool {
        let topups = &self.processor.payments[key].topups;
        self.model
            .pay
            .refunds
            .values()
            .any(|refund| refund.state == RefundState::Pending && topups.contains(&refund.topup))
    }

    /// Whether the store can find processor payment `key` by its charge alone.
    fn store_knows_charge(&self, key: &str) -> bool {
        let payment = &self.processor.payments[key];
        payment
            .topups
            .iter()
            .all(|topup| self.model.pay.topups[topup].charge_reference.as_ref() == Some(&payment.charge))
    }

    /// Notes the accounts whose payment state `op` may change.
    pub(crate) fn touch(&mut self, op: &Op) {
        let Op::Pay(op) = op else {
            return;
        };
        let pay = &self.model.pay;
        let topup_account = |id: &str| pay.topups.get(id).map(|topup| topup.account.clone());
        let accounts: Vec<String> = match op {
            PayOp::SetCustomer(account, _)
            | PayOp::RecordSetup(account, _)
            | PayOp::AdoptCard(account, _)
            | PayOp::RemoveCard(account)
            | PayOp::SetRule(account, _)
            | PayOp::Begin(account)
            | PayOp::Profile(account) => vec![account.clone()],
            PayOp::CompleteSetup(session, _) => pay
                .setups
                .get(session)
                .map(|(account, _)| account.clone())
                .into_iter()
                .collect(),
            PayOp::CreateTopup(topup) => vec![topup.account.to_string()],
            PayOp::Link(id, ..) | PayOp::Settle(id, _) => topup_account(id).into_iter().collect(),
            PayOp::BeginRefund(request) => topup_account(&request.topup_id).into_iter().collect(),
            PayOp::FinishRefund(id, _) => pay
                .refunds
                .get(id)
                .map(|refund| refund.account.clone())
                .into_iter()
                .collect(),
            PayOp::Reconcile(reference, _) => pay
                .find(reference)
                .map(|topup| topup.account.clone())
                .into_iter()
                .collect(),
            PayOp::Dispute(news) => pay
                .topups
                .values()
                .filter(|topup| {
                    topup.payment_reference.is_some() && topup.payment_reference == news.payment_reference
                        || topup.charge_reference.as_ref() == Some(&news.charge_reference)
                })
                .map(|topup| topup.account.clone())
                .collect(),
            PayOp::Event(..)
            | PayOp::Due(..)
            | PayOp::OpenAuto(_)
            | PayOp::OpenTopups(..)
            | PayOp::Find(_) => Vec::new(),
        };
        self.touched.extend(accounts);
    }

    fn new_card(&mut self) -> CardRecord {
        let id = self.fresh("pm_");
        let brand = *["visa", "mastercard", "amex"].choose(&mut self.rng).unwrap();
        CardRecord {
            processor_id: id,
            brand: brand.to_owned(),
            last4: format!("{:04}", self.rng.random_range(0..10_000)),
            exp_month: self.rng.random_range(1..=12),
            exp_year: self.rng.random_range(2027..=2035),
            added_at: self.clock.now(),
        }
    }

    /// An account with a card and a rule, when there is one, else any.
    fn pick_payment_account(&mut self) -> String {
        let with_rule: Vec<String> = self
            .model
            .pay
            .accounts
            .iter()
            .filter(|(_, pay)| pay.rule.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        if !with_rule.is_empty() && self.rng.random_bool(0.6) {
            return with_rule.choose(&mut self.rng).unwrap().clone();
        }
        self.pick_account()
    }

    fn topup_ids(&self, filter: impl Fn(&ModelTopup) -> bool) -> Vec<String> {
        self.model
            .pay
            .topups
            .values()
            .filter(|topup| filter(topup))
            .map(|topup| topup.id.clone())
            .collect()
    }

    pub(crate) fn payment_step(&mut self) -> Step {
        let roll = self.rng.random_range(0..1000);
        match roll {
            0..45 => self.card_setup_step(),
            45..75 => self.card_other_step(),
            75..165 => self.create_topup_step(),
            165..190 => self.link_step(),
            190..270 => Step::Pay("processor_decides", PayStep::Decide),
            270..380 => Step::Pay("topup_news", PayStep::Deliver { concurrent: false }),
            380..405 => Step::Pay("concurrent_topup_news", PayStep::Deliver { concurrent: true }),
            405..455 => self.refund_step(),
            455..495 => Step::Pay("refund_answer", PayStep::RefundAnswer),
            495..525 => Step::Pay("dispute_at_processor", PayStep::DisputeProcessor),
            525..560 => {
                let concurrent = self.rng.random_bool(0.2);
                Step::Pay(
                    if concurrent {
                        "concurrent_dispute_news"
                    } else {
                        "dispute_news"
                    },
                    PayStep::DisputeNews { concurrent },
                )
            }
            560..625 => self.set_rule_step(),
            625..700 => self.cross_threshold_step(),
            700..800 => {
                let count = self.rng.random_range(1..=3);
                let resume = self.rng.random_bool(0.5);
                let crash = self.rng.random_bool(0.08);
                Step::Pay("auto_recharge_workers", PayStep::Workers { count, resume, crash })
            }
            800..820 => Step::Pay("dashboard_refund", PayStep::DashboardRefund),
            820..850 => self.cool_down_step(),
            850..870 => {
                let account = self.pick_account();
                Step::One("auto_begin_direct", Op::Pay(PayOp::Begin(account)))
            }
            870..925 => self.payment_mix(),
            925..945 => Step::Pay("refund_news", PayStep::RefundNews),
            945..960 => self.cycle_boundary_step(),
            960..980 => self.lookup_step(),
            _ => {
                // A restart with recharges possibly left unanswered, then the workers resume.
                Step::Restart
            }
        }
    }

    fn card_setup_step(&mut self) -> Step {
        let without: Vec<String> = self
            .account_ids()
            .into_iter()
            .filter(|id| {
                self.model
                    .pay
                    .accounts
                    .get(id)
                    .is_none_or(|pay| pay.card.is_none())
            })
            .collect();
        let account = match without.choose(&mut self.rng) {
            Some(id) if self.rng.random_bool(0.7) => id.clone(),
            _ => self.pick_account(),
        };
        let roll = self.rng.random_range(0..100);
        let confirmed: Vec<String> = self
            .model
            .pay
            .setups
            .iter()
            .filter(|(_, (_, card))| card.is_some())
            .map(|(session, _)| session.clone())
            .collect();
        match roll {
            0..12 if !confirmed.is_empty() => {
                // The return and the webhook both confirm one setup.
                let session = confirmed.choose(&mut self.rng).unwrap().clone();
                let card = self.new_card();
                Step::One(
                    "card_setup_replayed",
                    Op::Pay(PayOp::CompleteSetup(session, card)),
                )
            }
            12..16 => {
                let card = self.new_card();
                Step::One(
                    "card_setup_unknown",
                    Op::Pay(PayOp::CompleteSetup("seti_missing".to_owned(), card)),
                )
            }
            22..30 => {
                let session = self.fresh("seti_");
                let copies = self.rng.random_range(2..=3);
                let first = self.new_card();
                let cards = (0..copies)
                    .map(|_| {
                        if self.rng.random_bool(0.5) {
                            first.clone()
                        } else {
                            self.new_card()
                        }
                    })
                    .collect();
                Step::Pay(
                    "card_setup_race",
                    PayStep::SetupRace {
                        account,
                        session,
                        cards,
                    },
                )
            }
            16..22 if !self.model.pay.setups.is_empty() => {
                let sessions: Vec<String> = self.model.pay.setups.keys().cloned().collect();
                let session = sessions.choose(&mut self.rng).unwrap().clone();
                Step::One(
                    "card_setup_recorded_again",
                    Op::Pay(PayOp::RecordSetup(account, session)),
                )
            }
            _ => {
                let session = self.fresh("seti_");
                let card = self.new_card();
                let mut ops = vec![
                    Op::Pay(PayOp::RecordSetup(account, session.clone())),
                    Op::Pay(PayOp::CompleteSetup(session.clone(), card.clone())),
                ];
                if self.rng.random_bool(0.2) {
                    // Confirmed twice (the return and the webhook).
                    ops.push(Op::Pay(PayOp::CompleteSetup(session, card)));
                }
                Step::Pay("card_setup", PayStep::Sequence(ops))
            }
        }
    }

    fn card_other_step(&mut self) -> Step {
        let account = self.pick_payment_account();
        match self.rng.random_range(0..100) {
            0..30 => {
                let card = match self
                    .model
                    .pay
                    .accounts
                    .get(&account)
                    .and_then(|pay| pay.card.clone())
                {
                    Some(current) if self.rng.random_bool(0.3) => current,
                    _ => self.new_card(),
                };
                Step::One("card_adopt", Op::Pay(PayOp::AdoptCard(account, card)))
            }
            30..60 => Step::One("card_remove", Op::Pay(PayOp::RemoveCard(account))),
            60..75 => {
                let creators = self.rng.random_range(2..=3);
                let ops = (0..creators)
                    .map(|_| {
                        let customer = self.fresh("cus_");
                        Op::Pay(PayOp::SetCustomer(account.clone(), customer))
                    })
                    .collect();
                Step::Group("concurrent_set_customer", Order::AnySerial, ops)
            }
            _ => {
                let others: Vec<String> = self
                    .model
                    .pay
                    .accounts
                    .iter()
                    .filter(|(id, pay)| **id != account && pay.customer.is_some())
                    .map(|(_, pay)| pay.customer.clone().unwrap())
                    .collect();
                let customer = match others.choose(&mut self.rng) {
                    Some(taken) if self.rng.random_bool(0.3) => taken.clone(),
                    _ => self.fresh("cus_"),
                };
                Step::One(
                    "set_processor_customer",
                    Op::Pay(PayOp::SetCustomer(account, customer)),
                )
            }
        }
    }

    fn topup_amount(&mut self) -> i64 {
        match self.rng.random_range(0..20) {
            0 => MIN_TOPUP,
            1 => MAX_TOPUP,
            2..=4 => money(&mut self.rng, 500, 10_000),
            _ => money(&mut self.rng, 10, 500),
        }
    }

    fn new_topup(&self, account: &str, amount: i64, key: &str, source: TopupSource) -> NewTopup {
        NewTopup {
            account: account_id(account),
            amount: TopupAmount::new(Micros::new(amount), TopupLimits::default()).unwrap(),
            source,
            idempotency_key: IdempotencyKey::parse(key).unwrap(),
            actor: actor(),
        }
    }

    fn create_topup_step(&mut self) -> Step {
        let account = self.pick_payment_account();
        let source = if self.rng.random_bool(0.6) {
            TopupSource::SavedCard
        } else {
            TopupSource::HostedPage
        };
        let existing: Vec<(String, String, i64)> = {
            let mut keys: Vec<(&(String, String), &String)> = self.model.pay.topup_keys.iter().collect();
            keys.sort();
            keys.into_iter()
                .map(|((account, key), id)| (account.clone(), key.clone(), self.model.pay.topups[id].amount))
                .collect()
        };
        let roll = self.rng.random_range(0..100);
        match roll {
            0..14 if !existing.is_empty() => {
                let (account, key, amount) = existing.choose(&mut self.rng).unwrap().clone();
                let same_body = self.rng.random_bool(0.75);
                let amount = if same_body {
                    amount
                } else if amount == MAX_TOPUP {
                    amount - CENT
                } else {
                    amount + CENT
                };
                let topup = self.new_topup(&account, amount, &key, source);
                let kind = if same_body {
                    "topup_replay_same"
                } else {
                    "topup_replay_conflicting"
                };
                Step::One(kind, Op::Pay(PayOp::CreateTopup(topup)))
            }
            14..19 => {
                // A customer key that an auto top-up uses, or is about to use.
                let next = self
                    .model
                    .pay
                    .accounts
                    .get(&account)
                    .and_then(|pay| pay.rule.as_ref())
                    .map_or(1, |rule| rule.last_sequence);
                let sequence = next + self.rng.random_range(0..=2);
                let amount = self.topup_amount();
                let topup = self.new_topup(&account, amount, &format!("auto-recharge-{sequence}"), source);
                Step::One("topup_with_a_recharge_key", Op::Pay(PayOp::CreateTopup(topup)))
            }
            19..22 => {
                let key = self.fresh("t");
                let amount = self.topup_amount();
                let topup = self.new_topup(&account, amount, &key, TopupSource::AutoRecharge);
                Step::One("topup_as_auto_refused", Op::Pay(PayOp::CreateTopup(topup)))
            }
            22..32 => {
                let key = self.fresh("t");
                let amount = self.topup_amount();
                let topup = self.new_topup(&account, amount, &key, source);
                let copies = self.rng.random_range(2..=4);
                Step::Group(
                    "concurrent_topup_same_key",
                    Order::FreshFirst,
                    vec![Op::Pay(PayOp::CreateTopup(topup)); copies],
                )
            }
            _ => {
                let key = self.fresh("t");
                let amount = self.topup_amount();
                let topup = self.new_topup(&account, amount, &key, source);
                Step::One("topup_create", Op::Pay(PayOp::CreateTopup(topup)))
            }
        }
    }

    fn link_step(&mut self) -> Step {
        let ids = self.topup_ids(|topup| topup.source != TopupSource::AutoRecharge);
        let Some(id) = ids.choose(&mut self.rng).cloned() else {
            return self.create_topup_step();
        };
        let topup = self.model.pay.topups[&id].clone();
        let payment = self
            .processor
            .payment_of(&id)
            .map(|payment| payment.payment.clone());
        let roll = self.rng.random_range(0..100);
        let (session, payment) = match roll {
            0..8 => {
                return Step::One(
                    "topup_link_unknown",
                    Op::Pay(PayOp::Link("top_missing".to_owned(), None, payment)),
                );
            }
            8..20 if topup.payment_reference.is_some() => (None, Some(self.fresh("pi_other_"))),
            20..30 if topup.checkout_session.is_some() => (Some(self.fresh("cs_other_")), None),
            30..40 => {
                // Another top-up's processor id.
                let others: Vec<String> = self
                    .model
                    .pay
                    .topups
                    .values()
                    .filter(|other| other.id != id)
                    .filter_map(|other| other.payment_reference.clone())
                    .collect();
                match others.choose(&mut self.rng) {
                    Some(other) if topup.payment_reference.is_none() || self.rng.random_bool(0.5) => {
                        (None, Some(other.clone()))
                    }
                    _ => (topup.checkout_session.clone(), payment),
                }
            }
            _ if topup.source == TopupSource::HostedPage && topup.checkout_session.is_none() => {
                (Some(self.fresh("cs_")), None)
            }
            _ => (topup.checkout_session.clone(), payment),
        };
        // Never link a processor id that would stick to the wrong top-up: only the
        // processor's own, or ones the model expects refused.
        let own = self
            .processor
            .payment_of(&id)
            .map(|payment| payment.payment.clone());
        let poisons = payment.is_some()
            && payment != own
            && topup.payment_reference.is_none()
            && !self
                .model
                .pay
                .topups
                .values()
                .any(|other| other.id != id && other.payment_reference == payment);
        let payment = if poisons { own } else { payment };
        Step::One("topup_link", Op::Pay(PayOp::Link(id, session, payment)))
    }

    fn refund_step(&mut self) -> Step {
        let paid = self.topup_ids(|topup| topup.status == TopupStatus::Succeeded);
        let roll = self.rng.random_range(0..100);
        let topup_id = match (roll, paid.choose(&mut self.rng)) {
            (0..4, _) => "top_missing".to_owned(),
            (4..12, _) | (_, None) => match self.topup_ids(|_| true).choose(&mut self.rng) {
                Some(id) => id.clone(),
                None => return self.create_topup_step(),
            },
            (_, Some(id)) => id.clone(),
        };
        let reason = (*["requested_by_customer", "duplicate", "goodwill"]
            .choose(&mut self.rng)
            .unwrap())
        .to_owned();
        let previous: Vec<ModelRefund> = self
            .model
            .pay
            .refunds
            .values()
            .filter(|refund| refund.topup == topup_id)
            .cloned()
            .collect();
        if let Some(first) = previous.choose(&mut self.rng)
            && let Some(key) = first.key.clone()
            && self.rng.random_bool(0.25)
        {
            let same_body = self.rng.random_bool(0.75);
            let request = RefundRequest {
                topup_id,
                amount: first.requested.map(Micros::new),
                reason: if same_body {
                    first.reason.clone()
                } else {
                    format!("{} again", first.reason)
                },
                idempotency_key: IdempotencyKey::parse(&key).unwrap(),
                actor: actor(),
            };
            let kind = if same_body {
                "refund_replay_same"
            } else {
                "refund_replay_conflicting"
            };
            return Step::One(kind, Op::Pay(PayOp::BeginRefund(request)));
        }
        let left = self
            .model
            .pay
            .topups
            .get(&topup_id)
            .map_or(0, |topup| topup.amount - topup.refunded - topup.disputed);
        let amount = match self.rng.random_range(0..100) {
            0..30 => None,
            30..75 if left >= CENT => Some(self.rng.random_range(1..=left / CENT) * CENT),
            75..82 => Some(left + CENT),
            82..86 => Some(*[0, -CENT, 5_000].choose(&mut self.rng).unwrap()),
            _ => self.model.pay.topups.get(&topup_id).map(|topup| topup.amount),
        };
        let key = self.fresh("r");
        let request = RefundRequest {
            topup_id,
            amount: amount.map(Micros::new),
            reason,
            idempotency_key: IdempotencyKey::parse(&key).unwrap(),
            actor: actor(),
        };
        Step::One("refund_begin", Op::Pay(PayOp::BeginRefund(request)))
    }

    fn settings(&mut self) -> (i64, i64) {
        let threshold = match self.rng.random_range(0..20) {
            0 => 5 * DOLLAR,
            1 => 9_990 * DOLLAR,
            2..=4 => money(&mut self.rng, 150, 2_000),
            _ => money(&mut self.rng, 5, 150),
        };
        let target = match self.rng.random_range(0..10) {
            0 => threshold + MIN_TOPUP,
            1 => MAX_TOPUP,
            _ => threshold + MIN_TOPUP + money(&mut self.rng, 0, 400),
        }
        .min(MAX_TOPUP);
        (threshold, target)
    }

    fn set_rule_step(&mut self) -> Step {
        let with_card: Vec<String> = self
            .model
            .pay
            .accounts
            .iter()
            .filter(|(_, pay)| pay.card.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let account = match with_card.choose(&mut self.rng) {
            Some(id) if self.rng.random_bool(0.9) => id.clone(),
            // Auto Top-Up needs a card: save one first, most of the time.
            None if self.rng.random_bool(0.8) => return self.card_setup_step(),
            _ => self.pick_account(),
        };
        let current = self
            .model
            .pay
            .accounts
            .get(&account)
            .and_then(|pay| pay.rule.clone());
        let enabled = self.rng.random_bool(0.8);
        let (threshold, target) = match &current {
            Some(rule) if self.rng.random_bool(0.3) => (rule.threshold, rule.target),
            _ => self.settings(),
        };
        let monthly_cap = match self.rng.random_range(0..100) {
            0..45 => None,
            45..55 => Some(DEFAULT_CAP),
            55..85 => Some(match self.rng.random_range(0..4) {
                0 => 0,
                1 => MIN_TOPUP,
                _ => money(&mut self.rng, 10, 300),
            }),
            85..96 => Some(money(&mut self.rng, 300, 20_000)),
            _ => Some(*[-CENT, 10 * DOLLAR + 5_000].choose(&mut self.rng).unwrap()),
        };
        let change = AutoRechargeChange {
            enabled,
            settings: AutoRechargeSettings::new(
                Micros::new(threshold),
                Micros::new(target),
                TopupLimits::default(),
            )
            .unwrap(),
            monthly_cap: monthly_cap.map(Micros::new),
        };
        let kind = match (&current, enabled) {
            (Some(rule), _) if matches!(rule.status, RuleStatus::InFlight(_)) => {
                "auto_rule_set_while_in_flight"
            }
            (_, true) => "auto_rule_set_on",
            (_, false) => "auto_rule_set_off",
        };
        Step::One(kind, Op::Pay(PayOp::SetRule(account, change)))
    }

    /// A debit that leaves the available balance just at, just under or well under the
    /// threshold of an account's rule.
    fn crossing_debit(&mut self, account: &str) -> Option<Op> {
        let rule = self.model.pay.accounts.get(account)?.rule.clone()?;
        let available = self.model.accounts.get(account)?.available;
        let spendable = self.available(account);
        let below = match self.rng.random_range(0..10) {
            0 => 0,
            1 => 1,
            2..=6 => self.rng.random_range(1..=rule.threshold.max(2)),
            _ => self.rng.random_range(1..=rule.target.max(2)),
        };
        let debit = (available - rule.threshold + below).min(spendable);
        if debit < 1 {
            return None;
        }
        if self.rng.random_bool(0.3) {
            // Through usage: units of a priced action that together cross it.
            let priced: Vec<(&str, i64)> = self
                .model
                .book
                .actions
                .iter()
                .filter_map(|(id, _)| {
                    self.unit_price(account, id)
                        .filter(|unit| *unit > 0)
                        .map(|unit| (*id, unit))
                })
                .collect();
            if let Some((action, unit)) = priced.choose(&mut self.rng).copied() {
                let quantity = u64::try_from((debit + unit - 1) / unit).unwrap();
                if quantity <= tollgate_core::ids::MAX_QUANTITY && quantity * unit as u64 <= spendable as u64
                {
                    let key = self.fresh("k");
                    return Some(Op::Usage(usage_command(account, action, quantity, &key)));
                }
            }
        }
        let key = self.rng.random_bool(0.5).then(|| self.fresh("g"));
        Some(Op::Grant(grant_command(
            account,
            -debit.min(MAX_OPERATION_AMOUNT.get()),
            "correction".to_owned(),
            key.as_deref(),
        )))
    }

    fn cross_threshold_step(&mut self) -> Step {
        let with_rule: Vec<String> = self
            .model
            .pay
            .accounts
            .iter()
            .filter(|(_, pay)| pay.rule.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let Some(account) = with_rule.choose(&mut self.rng).cloned() else {
            return self.set_rule_step();
        };
        let Some(debit) = self.crossing_debit(&account) else {
            // Below already: a grant lifts it over, so that the next debit crosses again.
            let rule = self.model.pay.accounts[&account].rule.clone().unwrap();
            let lift = (rule.target - self.model.accounts[&account].available).max(1);
            return Step::One(
                "auto_balance_lifted",
                Op::Grant(grant_command(
                    &account,
                    lift.min(MAX_OPERATION_AMOUNT.get()),
                    "goodwill".to_owned(),
                    None,
                )),
            );
        };
        if self.rng.random_bool(0.35) {
            // The debit and workers race.
            let mut ops = vec![debit, Op::Pay(PayOp::Begin(account.clone()))];
            if self.rng.random_bool(0.5) {
                ops.push(Op::Pay(PayOp::Begin(account.clone())));
            }
            return Step::Group("concurrent_debit_and_begin", Order::AnySerial, ops);
        }
        Step::One("auto_debit_crossing_threshold", debit)
    }

    fn cool_down_step(&mut self) -> Step {
        let now = self.clock.now();
        let cooling: Vec<Ts> = self
            .model
            .pay
            .accounts
            .values()
            .filter_map(|pay| pay.rule.as_ref()?.cool_down_until())
            .filter(|until| *until > now)
            .collect();
        match cooling.choose(&mut self.rng) {
            Some(until) => {
                let offset = *[
                    Duration::microseconds(-1),
                    Duration::ZERO,
                    Duration::microseconds(1),
                    Duration::seconds(30),
                ]
                .choose(&mut self.rng)
                .unwrap();
                let target = (*until + offset).max(now);
                if self.rng.random_bool(0.7) {
                    let count = self.rng.random_range(1..=3);
                    return Step::Pay(
                        "workers_at_cool_down_end",
                        PayStep::AdvanceThenWorkers {
                            by: target - now,
                            count,
                        },
                    );
                }
                Step::Advance("advance_to_cool_down_end", target - now)
            }
            None => Step::Advance(
                "advance_past_cool_down",
                Duration::seconds(self.rng.random_range(3_000..=4_000)),
            ),
        }
    }

    /// To the next cycle boundary of an account with a rule (capped ones first), then
    /// the workers: a new cycle lifts the cap.
    fn cycle_boundary_step(&mut self) -> Step {
        let now = self.clock.now();
        let mut with_rule: Vec<(bool, String)> = self
            .model
            .pay
            .accounts
            .iter()
            .filter_map(|(id, pay)| {
                let rule = pay.rule.as_ref()?;
                Some((matches!(rule.status, RuleStatus::CapReached { .. }), id.clone()))
            })
            .filter(|(_, id)| self.model.accounts.contains_key(id))
            .collect();
        with_rule.sort();
        let capped: Vec<String> = with_rule
            .iter()
            .filter(|(capped, _)| *capped)
            .map(|(_, id)| id.clone())
            .collect();
        let pool: Vec<String> = if !capped.is_empty() && self.rng.random_bool(0.7) {
            capped
        } else {
            with_rule.into_iter().map(|(_, id)| id).collect()
        };
        let Some(account) = pool.choose(&mut self.rng).cloned() else {
            return self.set_rule_step();
        };
        let created = self.model.accounts[&account].created_at;
        let mut index = 0;
        while cycle_start(created, index) <= now {
            index += 1;
        }
        let offset = *[
            Duration::microseconds(-1),
            Duration::ZERO,
            Duration::microseconds(1),
        ]
        .choose(&mut self.rng)
        .unwrap();
        let target = (cycle_start(created, index) + offset).max(now);
        let count = self.rng.random_range(1..=3);
        Step::Pay(
            "workers_at_cycle_boundary",
            PayStep::AdvanceThenWorkers {
                by: target - now,
                count,
            },
        )
    }

    fn lookup_step(&mut self) -> Step {
        let references: Vec<TopupReference> = self
            .model
            .pay
            .topups
            .values()
            .flat_map(|topup| {
                [
                    topup
                        .checkout_session
                        .clone()
                        .map(TopupReference::CheckoutSession),
                    topup.payment_reference.clone().map(TopupReference::Payment),
                    topup.charge_reference.clone().map(TopupReference::Charge),
                ]
            })
            .flatten()
            .collect();
        match self.rng.random_range(0..5) {
            4 => {
                let limit = *[1, 2, 100].choose(&mut self.rng).unwrap();
                let before = self.clock.now() + Duration::microseconds(self.rng.random_range(-1..=1));
                Step::One("lookup_open_topups", Op::Pay(PayOp::OpenTopups(before, limit)))
            }
            0 => Step::One(
                "lookup_open_auto",
                Op::Pay(PayOp::OpenAuto(*[1, 2, 100].choose(&mut self.rng).unwrap())),
            ),
            1 => {
                let limit = *[1, 2, 100].choose(&mut self.rng).unwrap();
                Step::One("lookup_due", Op::Pay(PayOp::Due(limit, self.clock.now())))
            }
            2 => {
                let account = self.pick_account();
                Step::One("lookup_profile", Op::Pay(PayOp::Profile(account)))
            }
            _ => {
                let reference = references
                    .choose(&mut self.rng)
                    .cloned()
                    .unwrap_or(TopupReference::Payment("pi_missing".to_owned()));
                Step::One("lookup_find_topup", Op::Pay(PayOp::Find(reference)))
            }
        }
    }

    /// Small groups on one account whose order matters, explained by some serial order.
    fn payment_mix(&mut self) -> Step {
        let account = self.pick_payment_account();
        if !self.model.accounts.contains_key(&account) {
            return Step::One("auto_begin_direct", Op::Pay(PayOp::Begin(account)));
        }
        let count = self.rng.random_range(2..=4);
        let mut ops = Vec::with_capacity(count);
        for _ in 0..count {
            let op = match self.rng.random_range(0..9) {
                0 | 1 => Op::Pay(PayOp::Begin(account.clone())),
                2 => self
                    .crossing_debit(&account)
                    .unwrap_or_else(|| Op::Usage(self.usage_command(&account))),
                3 => match self.set_rule_step() {
                    Step::One(_, Op::Pay(PayOp::SetRule(_, change))) => {
                        Op::Pay(PayOp::SetRule(account.clone(), change))
                    }
                    _ => Op::Pay(PayOp::Begin(account.clone())),
                },
                4 => Op::Pay(PayOp::RemoveCard(account.clone())),
                5 => {
                    let card = self.new_card();
                    Op::Pay(PayOp::AdoptCard(account.clone(), card))
                }
                6 | 7 => {
                    // News about one of the account's payments (never one it did not send).
                    let ids = self.topup_ids(|topup| topup.account == account);
                    let news: Vec<(String, TopupOutcome)> = ids
                        .iter()
                        .filter_map(|id| {
                            let payment = self.processor.payment_of(id)?;
                            Some((id.clone(), payment.news.last()?.1.clone()))
                        })
                        .collect();
                    match news.choose(&mut self.rng) {
                        Some((id, news)) => Op::Pay(PayOp::Settle(id.clone(), news.clone())),
                        None => Op::Pay(PayOp::Begin(account.clone())),
                    }
                }
                _ => Op::Usage(self.usage_command(&account)),
            };
            ops.push(op);
        }
        Step::Group("concurrent_payment_mix", Order::AnySerial, ops)
    }

    // ----- running ---------------------------------------------------------

    async fn run_logged(&mut self, op: Op) -> Check {
        self.log.push(format!("    {op:?}"));
        self.run_one(op).await
    }

    async fn run_group_logged(&mut self, kind: &str, order: Order, ops: Vec<Op>) -> Check {
        if ops.is_empty() {
            return Ok(());
        }
        self.log.push(format!("    {kind} ({order:?}): {ops:?}"));
        self.tally(format!("  group: {kind}"));
        self.run_group(order, ops).await
    }

    pub(crate) async fn run_pay_step(&mut self, step: &PayStep) -> Check {
        let result = match step {
            PayStep::Sequence(ops) => {
                for op in ops {
                    self.run_logged(op.clone()).await?;
                }
                Ok(())
            }
            PayStep::Decide => self.processor_decides().await,
            PayStep::Deliver { concurrent } => self.deliver(*concurrent).await,
            PayStep::RefundAnswer => self.refund_answer().await,
            PayStep::DisputeProcessor => self.dispute_at_processor().await,
            PayStep::DisputeNews { concurrent } => self.dispute_news(*concurrent).await,
            PayStep::DashboardRefund => self.dashboard_refund().await,
            PayStep::RefundNews => self.refund_news().await,
            PayStep::Workers { count, resume, crash } => self.workers(*count, *resume, *crash).await,
            PayStep::AdvanceThenWorkers { by, count } => {
                self.clock.advance(*by);
                self.check_every_account = true;
                self.workers(*count, false, false).await
            }
            PayStep::SetupRace {
                account,
                session,
                cards,
            } => {
                self.run_logged(Op::Pay(PayOp::RecordSetup(account.clone(), session.clone())))
                    .await?;
                let ops = cards
                    .iter()
                    .map(|card| Op::Pay(PayOp::CompleteSetup(session.clone(), card.clone())))
                    .collect();
                self.run_group_logged("setup confirmed twice at once", Order::AnySerial, ops)
                    .await
            }
            PayStep::Drain => self.drain().await,
        };
        self.processor.sync(&self.model);
        result
    }

    /// The processor moves a payment on and says so; `None` when it is final.
    fn advance_payment(&mut self, key: &str, worker: bool) -> Option<TopupOutcome> {
        let (state, source) = {
            let payment = &self.processor.payments[key];
            (payment.state, payment.source)
        };
        let roll = self.rng.random_range(0..100);
        let decline = *[
            "card_declined",
            "insufficient_funds",
            "expired_card",
            "do_not_honor",
            "processing_error",
            "authentication_required",
        ]
        .choose(&mut self.rng)
        .unwrap();
        let (next, code) = match (state, source) {
            (PState::Succeeded | PState::Canceled, _) => return None,
            (PState::Open, TopupSource::HostedPage) => match roll {
                0..50 => (PState::Succeeded, None),
                50..70 => (PState::Failed, Some(decline)),
                70..85 => (PState::RequiresAction, None),
                _ => (PState::Canceled, None),
            },
            (PState::Open, _) => match roll {
                0..55 => (PState::Succeeded, None),
                55..85 => (PState::Failed, Some(decline)),
                85..97 => (PState::RequiresAction, None),
                _ => (PState::Canceled, None),
            },
            (PState::RequiresAction, _) => match roll {
                0..50 => (PState::Succeeded, None),
                50..80 => (PState::Failed, Some("payment_intent_authentication_failure")),
                _ => (PState::Canceled, None),
            },
            // A decline is final for an off-session charge (same key, same answer) unless
            // the customer retries on the hosted page; rarely a late success all the same.
            (PState::Failed, _) if worker => return None,
            (PState::Failed, TopupSource::HostedPage) => match roll {
                0..60 => (PState::Succeeded, None),
                60..80 => (PState::RequiresAction, None),
                _ => (PState::Failed, Some(decline)),
            },
            (PState::Failed, _) => match roll {
                0..20 => (PState::Succeeded, None),
                _ => return None,
            },
        };
        let event = self.processor.fresh("evt_");
        let with_charge = self.rng.random_bool(0.9);
        let without_payment = self.rng.random_bool(0.2);
        let payment = self.processor.payments.get_mut(key).unwrap();
        payment.state = next;
        let news = match next {
            PState::Succeeded => TopupOutcome::Succeeded {
                payment_reference: payment.payment.clone(),
                charge_reference: with_charge.then(|| payment.charge.clone()),
                card_brand: Some("visa".to_owned()),
                card_last4: Some("4242".to_owned()),
            },
            PState::Failed => TopupOutcome::Failed {
                payment_reference: (!without_payment).then(|| payment.payment.clone()),
                code: code.unwrap().to_owned(),
                message: "The card was declined.".to_owned(),
            },
            PState::RequiresAction => TopupOutcome::RequiresAction {
                payment_reference: payment.payment.clone(),
            },
            PState::Canceled => TopupOutcome::Canceled,
            PState::Open => unreachable!(),
        };
        payment.news.push((event, news.clone()));
        Some(news)
    }

    async fn processor_decides(&mut self) -> Check {
        // Auto top-ups are charged by the workers; here only the customer acts on them
        // (3-D Secure completed, or not, long after the worker gave up).
        let keys: Vec<String> = self
            .processor
            .payments
            .iter()
            .filter(|(_, payment)| {
                !matches!(
                    (payment.state, payment.source),
                    (PState::Succeeded | PState::Canceled, _)
                        | (PState::Open | PState::Failed, TopupSource::AutoRecharge)
                )
            })
            .map(|(key, _)| key.clone())
            .collect();
        let Some(key) = keys.choose(&mut self.rng).cloned() else {
            return Ok(());
        };
        let topup = self.processor.payments[&key].topups[0].clone();
        let linked = self.model.pay.topups[&topup].payment_reference.is_some();
        let payment = self.processor.payments[&key].payment.clone();
        let Some(news) = self.advance_payment(&key, false) else {
            return Ok(());
        };
        if !linked && self.rng.random_bool(0.3) {
            // Billing records the processor's id as soon as it has one.
            self.run_logged(Op::Pay(PayOp::Link(topup.clone(), None, Some(payment))))
                .await?;
        }
        if self.rng.random_bool(0.6) {
            // The answer (the charge's response, the browser's return) arrives at once.
            self.run_logged(Op::Pay(PayOp::Settle(topup, news))).await?;
        } else {
            self.tally("  processor: answer not delivered (yet)");
        }
        Ok(())
    }

    /// A payment's news item: the latest most of the time, else an older one (a
    /// duplicate, a reordered or a late delivery).
    fn pick_news(&mut self, key: &str) -> Option<(String, TopupOutcome)> {
        let news = &self.processor.payments[key].news;
        if news.is_empty() {
            return None;
        }
        let index = if self.rng.random_bool(0.55) {
            news.len() - 1
        } else {
            self.rng.random_range(0..news.len())
        };
        let picked = news[index].clone();
        if index + 1 < news.len() {
            self.tally("  processor: older news delivered (reordered or late)");
        }
        Some(picked)
    }

    async fn deliver(&mut self, concurrent: bool) -> Check {
        let with_news: Vec<String> = self
            .processor
            .payments
            .iter()
            .filter(|(_, payment)| !payment.news.is_empty())
            .map(|(key, _)| key.clone())
            .collect();
        // Prefer payments whose latest news the store has not applied.
        let behind: Vec<String> = with_news
            .iter()
            .filter(|key| {
                let payment = &self.processor.payments[key.as_str()];
                payment.topups.iter().any(|topup| {
                    let status = self.model.pay.topups[topup].status;
                    outcome_status(&payment.news.last().unwrap().1) != status
                })
            })
            .cloned()
            .collect();
        let pool = if !behind.is_empty() && self.rng.random_bool(0.6) {
            behind
        } else {
            with_news
        };
        let Some(key) = pool.choose(&mut self.rng).cloned() else {
            return self.processor_decides().await;
        };
        let topup = self.processor.payments[&key].topups[0].clone();
        if concurrent {
            let copies = self.rng.random_range(2..=4);
            let mut ops = Vec::with_capacity(copies);
            for _ in 0..copies {
                let (_, news) = self.pick_news(&key).unwrap();
                ops.push(Op::Pay(PayOp::Settle(topup.clone(), news)));
            }
            return self
                .run_group_logged("concurrent deliveries", Order::AnySerial, ops)
                .await;
        }
        let (event, mut news) = self.pick_news(&key).unwrap();
        let stored = self.model.pay.topups[&topup].payment_reference.clone();
        let mut foreign = false;
        if let Some(stored) = stored
            && self.rng.random_bool(0.05)
        {
            foreign = true;
            // News naming another payment: refused, and changes nothing.
            let other = format!("{stored}_other");
            news = match news {
                TopupOutcome::Succeeded {
                    charge_reference,
                    card_brand,
                    card_last4,
                    ..
                } => TopupOutcome::Succeeded {
                    payment_reference: other,
                    charge_reference,
                    card_brand,
                    card_last4,
                },
                TopupOutcome::Failed { code, message, .. } => TopupOutcome::Failed {
                    payment_reference: Some(other),
                    code,
                    message,
                },
                TopupOutcome::RequiresAction { .. } => TopupOutcome::RequiresAction {
                    payment_reference: other,
                },
                TopupOutcome::Canceled => TopupOutcome::Canceled,
            };
        }
        let kind = event_type(&news);
        self.run_logged(Op::Pay(PayOp::Settle(topup, news))).await?;
        if self.rng.random_bool(0.5) {
            // By webhook: applied, then recorded (a duplicate is recorded once), and
            // acknowledged: the processor stops sending it.
            self.run_logged(Op::Pay(PayOp::Event(event.clone(), kind.to_owned())))
                .await?;
            if !foreign {
                self.processor.acked.insert(event);
            }
        }
        Ok(())
    }

    /// What the processor answers about refund `id` (decided once).
    fn refund_decision(&mut self, id: &str) -> Result<String, String> {
        if let Some(answer) = self.processor.refunds.get(id) {
            return answer.clone();
        }
        let refund = self.model.pay.refunds[id].clone();
        let key = self.processor.of_topup[&refund.topup].clone();
        let refused = self.rng.random_bool(0.12);
        let number = self.processor.fresh("re_");
        let event = self.processor.fresh("evt_");
        let payment = self.processor.payments.get_mut(&key).unwrap();
        let answer = if payment.disputed {
            Err("charge_disputed".to_owned())
        } else if payment.refunded + refund.amount > payment.amount {
            Err("amount_too_large".to_owned())
        } else if refused {
            Err("expired_or_canceled_card".to_owned())
        } else {
            payment.refunded += refund.amount;
            payment.refund_news.push((event, payment.refunded));
            Ok(number)
        };
        self.processor.refunds.insert(id.to_owned(), answer.clone());
        answer
    }

    async fn refund_answer(&mut self) -> Check {
        let pending: Vec<String> = self
            .model
            .pay
            .refunds
            .values()
            .filter(|refund| refund.state == RefundState::Pending)
            .map(|refund| refund.id.clone())
            .collect();
        let finished: Vec<String> = self
            .model
            .pay
            .refunds
            .values()
            .filter(|refund| refund.state != RefundState::Pending)
            .map(|refund| refund.id.clone())
            .collect();
        let roll = self.rng.random_range(0..100);
        let op = match (roll, pending.choose(&mut self.rng).cloned()) {
            (0..5, _) => PayOp::FinishRefund("ref_missing".to_owned(), Ok("re_missing".to_owned())),
            (5..12, Some(id)) => {
                let taken: Vec<String> = self
                    .model
                    .pay
                    .refunds
                    .values()
                    .filter_map(|refund| refund.processor_refund.clone())
                    .collect();
                match taken.choose(&mut self.rng) {
                    // Another refund's processor id: refused, nothing changes.
                    Some(other) => PayOp::FinishRefund(id, Ok(other.clone())),
                    None => {
                        let answer = self.refund_decision(&id);
                        PayOp::FinishRefund(id, answer)
                    }
                }
            }
            (12..35, _) | (_, None) => match finished.choose(&mut self.rng).cloned() {
                Some(id) => {
                    // Heard again, or a contrary answer after the first: nothing changes.
                    let answer = self.refund_decision(&id);
                    let answer = if self.rng.random_bool(0.5) {
                        answer
                    } else {
                        match answer {
                            Ok(_) => Err("late refusal".to_owned()),
                            Err(_) => Ok(self.processor.fresh("re_late_")),
                        }
                    };
                    PayOp::FinishRefund(id, answer)
                }
                None => return Ok(()),
            },
            (_, Some(id)) => {
                let answer = self.refund_decision(&id);
                PayOp::FinishRefund(id, answer)
            }
        };
        self.run_logged(Op::Pay(op)).await
    }

    async fn dashboard_refund(&mut self) -> Check {
        let refundable: Vec<String> = self
            .processor
            .payments
            .iter()
            .filter(|(_, payment)| {
                payment.state == PState::Succeeded && !payment.disputed && payment.refunded < payment.amount
            })
            .map(|(key, _)| key.clone())
            .collect();
        let Some(key) = refundable.choose(&mut self.rng).cloned() else {
            return Ok(());
        };
        let event = self.processor.fresh("evt_");
        let payment = &self.processor.payments[&key];
        let left = payment.amount - payment.refunded;
        let amount = if self.rng.random_bool(0.4) {
            left
        } else {
            self.rng.random_range(1..=left / CENT) * CENT
        };
        let payment = self.processor.payments.get_mut(&key).unwrap();
        payment.refunded += amount;
        payment.refund_news.push((event, payment.refunded));
        self.model.count("refund made in the processor's dashboard");
        if self.rng.random_bool(0.5) {
            let index = self.processor.payments[&key].refund_news.len() - 1;
            return self.deliver_refund_news(&key, index, true).await;
        }
        Ok(())
    }

    /// What Billing does before it applies refund or dispute news: when the store does not
    /// know that the payment succeeded (the news came first, or the payment was never
    /// linked), it asks the processor for the payment and settles the top-up from it, so
    /// the news is applied, not acknowledged and lost.
    async fn resolve_payment_first(&mut self, key: &str) -> Check {
        if self.store_knows_success(key) {
            return Ok(());
        }
        // Refunds and disputes exist only for a payment that succeeded, which is final:
        // its latest news is that success.
        let Some((_, news)) = self.processor.payments[key].news.last().cloned() else {
            return Ok(());
        };
        self.tally("  billing: payment resolved before its refund or dispute news");
        self.model
            .count("refund or dispute news before the success: payment resolved first");
        for topup in self.processor.payments[key].topups.clone() {
            self.run_logged(Op::Pay(PayOp::Settle(topup, news.clone())))
                .await?;
        }
        Ok(())
    }

    async fn deliver_refund_news(&mut self, key: &str, index: usize, webhook: bool) -> Check {
        let by_payment = self.rng.random_bool(0.7);
        self.deliver_refund_news_by(key, index, webhook, by_payment).await
    }

    /// `charge.refunded` names the payment (a PaymentIntent's charge always does) or only
    /// the charge.
    async fn deliver_refund_news_by(
        &mut self,
        key: &str,
        index: usize,
        webhook: bool,
        by_payment: bool,
    ) -> Check {
        if self.refund_pending(key) {
            self.tally("  processor: charge.refunded while a refund of ours is pending");
        }
        self.resolve_payment_first(key).await?;
        // Stripe's charge names its PaymentIntent: only the charge when the store has it
        // (Billing looks the charge's payment up otherwise).
        let by_payment = by_payment || !self.store_knows_charge(key);
        let payment = &self.processor.payments[key];
        let (event, total) = payment.refund_news[index].clone();
        let reference = if by_payment {
            TopupReference::Payment(payment.payment.clone())
        } else {
            TopupReference::Charge(payment.charge.clone())
        };
        self.run_logged(Op::Pay(PayOp::Reconcile(reference, Micros::new(total))))
            .await?;
        self.processor.acked.insert(event.clone());
        if webhook {
            self.run_logged(Op::Pay(PayOp::Event(event, "charge.refunded".to_owned())))
                .await?;
        }
        Ok(())
    }

    async fn refund_news(&mut self) -> Check {
        let keys: Vec<String> = self
            .processor
            .payments
            .iter()
            .filter(|(_, payment)| !payment.refund_news.is_empty())
            .map(|(key, _)| key.clone())
            .collect();
        let Some(key) = keys.choose(&mut self.rng).cloned() else {
            return self.dashboard_refund().await;
        };
        let count = self.processor.payments[&key].refund_news.len();
        let index = if self.rng.random_bool(0.55) {
            count - 1
        } else {
            self.rng.random_range(0..count)
        };
        let webhook = self.rng.random_bool(0.5);
        self.deliver_refund_news(&key, index, webhook).await
    }

    async fn dispute_at_processor(&mut self) -> Check {
        let open: Vec<String> = self
            .processor
            .disputes
            .iter()
            .filter(|(_, dispute)| dispute.status == DisputeStatus::Open)
            .map(|(id, _)| id.clone())
            .collect();
        let disputable: Vec<String> = self
            .processor
            .payments
            .iter()
            .filter(|(key, payment)| {
                payment.state == PState::Succeeded
                    && payment.refunded < payment.amount
                    && !self
                        .processor
                        .disputes
                        .values()
                        .any(|dispute| dispute.payment == **key)
            })
            .map(|(key, _)| key.clone())
            .collect();
        let id = if !open.is_empty() && (disputable.is_empty() || self.rng.random_bool(0.5)) {
            let id = open.choose(&mut self.rng).unwrap().clone();
            let status = if self.rng.random_bool(0.5) {
                DisputeStatus::Won
            } else {
                DisputeStatus::Lost
            };
            let event = self.processor.fresh("evt_");
            let dispute = self.processor.disputes.get_mut(&id).unwrap();
            dispute.status = status;
            dispute.news.push((event, status));
            let key = dispute.payment.clone();
            // A lost dispute keeps the money taken: the charge can no longer be refunded.
            self.processor.payments.get_mut(&key).unwrap().disputed = status == DisputeStatus::Lost;
            id
        } else if let Some(key) = disputable.choose(&mut self.rng).cloned() {
            let payment = &self.processor.payments[&key];
            let most = payment.amount - payment.refunded;
            let amount = if self.rng.random_bool(0.7) {
                most
            } else {
                self.rng.random_range(1..=most / CENT) * CENT
            };
            let id = self.processor.fresh("dp_");
            let event = self.processor.fresh("evt_");
            self.processor.disputes.insert(
                id.clone(),
                ProcessorDispute {
                    payment: key.clone(),
                    amount,
                    status: DisputeStatus::Open,
                    news: vec![(event, DisputeStatus::Open)],
                },
            );
            self.processor.payments.get_mut(&key).unwrap().disputed = true;
            id
        } else {
            return Ok(());
        };
        if self.rng.random_bool(0.5) {
            let index = self.processor.disputes[&id].news.len() - 1;
            return self.deliver_dispute(&id, index, true, true).await;
        }
        Ok(())
    }

    async fn deliver_dispute(&mut self, id: &str, index: usize, with_payment: bool, webhook: bool) -> Check {
        let key = self.processor.disputes[id].payment.clone();
        self.resolve_payment_first(&key).await?;
        let op = self.dispute_op(id, index, with_payment);
        let event = self.processor.disputes[id].news[index].0.clone();
        self.run_logged(op).await?;
        self.processor.acked.insert(event.clone());
        if webhook {
            let kind = match self.processor.disputes[id].news[index].1 {
                DisputeStatus::Open => "charge.dispute.created",
                _ => "charge.dispute.closed",
            };
            self.run_logged(Op::Pay(PayOp::Event(event, kind.to_owned())))
                .await?;
        }
        Ok(())
    }

    fn dispute_op(&self, id: &str, index: usize, with_payment: bool) -> Op {
        let dispute = &self.processor.disputes[id];
        let with_payment = with_payment || !self.store_knows_charge(&dispute.payment);
        let payment = &self.processor.payments[&dispute.payment];
        Op::Pay(PayOp::Dispute(DisputeNews {
            dispute: id.to_owned(),
            payment_reference: with_payment.then(|| payment.payment.clone()),
            charge_reference: payment.charge.clone(),
            amount: Micros::new(dispute.amount),
            status: dispute.news[index].1,
        }))
    }

    async fn dispute_news(&mut self, concurrent: bool) -> Check {
        let ids: Vec<String> = self.processor.disputes.keys().cloned().collect();
        let Some(id) = ids.choose(&mut self.rng).cloned() else {
            return self.dispute_at_processor().await;
        };
        let count = self.processor.disputes[&id].news.len();
        let pick = |rng: &mut StdRng| {
            if rng.random_bool(0.55) {
                count - 1
            } else {
                rng.random_range(0..count)
            }
        };
        if concurrent {
            let key = self.processor.disputes[&id].payment.clone();
            self.resolve_payment_first(&key).await?;
            let copies = self.rng.random_range(2..=3);
            let ops = (0..copies)
                .map(|_| {
                    let index = pick(&mut self.rng);
                    let with_payment = self.rng.random_bool(0.7);
                    let event = self.processor.disputes[&id].news[index].0.clone();
                    self.processor.acked.insert(event);
                    self.dispute_op(&id, index, with_payment)
                })
                .collect();
            return self
                .run_group_logged("concurrent dispute news", Order::AnySerial, ops)
                .await;
        }
        let index = pick(&mut self.rng);
        // Rarely, news of a recorded dispute naming another top-up's payment: refused.
        if self.model.pay.disputes.contains_key(&id) && self.rng.random_bool(0.05) {
            let recorded = self.model.pay.disputes[&id].topup.clone();
            let others: Vec<String> = self
                .model
                .pay
                .topups
                .values()
                .filter(|topup| topup.id != recorded)
                .filter_map(|topup| topup.payment_reference.clone())
                .collect();
            if let Some(other) = others.choose(&mut self.rng).cloned()
                && let Op::Pay(PayOp::Dispute(mut news)) = self.dispute_op(&id, index, true)
            {
                news.payment_reference = Some(other);
                return self.run_logged(Op::Pay(PayOp::Dispute(news))).await;
            }
        }
        let with_payment = self.rng.random_bool(0.7);
        let webhook = self.rng.random_bool(0.5);
        self.deliver_dispute(&id, index, with_payment, webhook).await
    }

    /// A worker charges a recharge: the processor answers for its key (deciding now if
    /// it never heard of it), or the answer is lost. A payment waiting for
    /// authentication is closed by the worker (nobody is there to authenticate).
    async fn charge_recharge(&mut self, topup: &str) -> Check {
        self.charge_recharge_losing(topup, 0.15).await
    }

    async fn charge_recharge_losing(&mut self, topup: &str, lost: f64) -> Check {
        let key = self.processor.of_topup[topup].clone();
        if self.processor.payments[&key].state == PState::Open {
            self.advance_payment(&key, true);
        }
        if self.rng.random_bool(lost) {
            self.tally("  processor: no answer (the charge is resumed later)");
            self.model.count("auto top-up charge left unanswered");
            return Ok(());
        }
        let Some((_, news)) = self.processor.payments[&key].news.last().cloned() else {
            return Ok(());
        };
        let requires_action = matches!(news, TopupOutcome::RequiresAction { .. });
        self.run_logged(Op::Pay(PayOp::Settle(topup.to_owned(), news)))
            .await?;
        if requires_action {
            self.run_logged(Op::Pay(PayOp::Settle(topup.to_owned(), TopupOutcome::Canceled)))
                .await?;
        }
        Ok(())
    }

    async fn workers(&mut self, count: usize, resume: bool, crash: bool) -> Check {
        if resume {
            let limit = *[1, 2, 100].choose(&mut self.rng).unwrap();
            let open = self.model.open_autos(limit);
            self.run_logged(Op::Pay(PayOp::OpenAuto(limit))).await?;
            for topup in open {
                self.charge_recharge(&topup.id).await?;
            }
        }
        let limits: Vec<usize> = (0..count)
            .map(|_| *[1, 2, 100, 100].choose(&mut self.rng).unwrap())
            .collect();
        let dues: Vec<Vec<String>> = limits
            .iter()
            .map(|limit| self.model.due(self.clock.now(), *limit))
            .collect();
        let now = self.clock.now();
        let ops = limits
            .iter()
            .map(|limit| Op::Pay(PayOp::Due(*limit, now)))
            .collect();
        self.run_group_logged("workers ask what is due", Order::Independent, ops)
            .await?;
        let mut begins: Vec<Op> = dues
            .iter()
            .flatten()
            .map(|account| Op::Pay(PayOp::Begin(account.clone())))
            .collect();
        if self.rng.random_bool(0.2) {
            // A caller asking about an account that is not due.
            let account = self.pick_account();
            begins.push(Op::Pay(PayOp::Begin(account)));
        }
        let before: HashSet<String> = self.model.pay.topups.keys().cloned().collect();
        self.run_group_logged("workers begin", Order::FreshFirst, begins)
            .await?;
        let started: Vec<String> = self
            .model
            .pay
            .topups
            .keys()
            .filter(|id| !before.contains(*id))
            .cloned()
            .collect();
        self.processor.sync(&self.model);
        if crash && !started.is_empty() {
            // Down after the recharges were recorded, before the card was charged.
            self.log.push("    crash after begin".to_owned());
            self.model
                .count("crash between beginning a recharge and charging it");
            return self.restart().await;
        }
        for topup in started {
            self.charge_recharge(&topup).await?;
        }
        Ok(())
    }

    /// Every answer the processor gave reaches the store: restart, resume open
    /// recharges, recover open top-ups, retry webhooks, answer refunds, deliver disputes.
    async fn drain(&mut self) -> Check {
        self.restart().await?;
        // The worker resumes the open recharges (same key, the processor's answer for it).
        let open = self.model.open_autos(100);
        self.run_logged(Op::Pay(PayOp::OpenAuto(100))).await?;
        for topup in open {
            self.charge_recharge_losing(&topup.id, 0.0).await?;
        }
        // The recovery pass asks the processor about every open top-up.
        let now = self.clock.now();
        let open = self.model.open_topups(now, 100);
        self.run_logged(Op::Pay(PayOp::OpenTopups(now, 100))).await?;
        for topup in open {
            let payment = self.processor.payment_of(&topup.id).unwrap();
            if let Some((_, news)) = payment.news.last().cloned() {
                self.run_logged(Op::Pay(PayOp::Settle(topup.id.clone(), news)))
                    .await?;
            }
        }
        // Every webhook event not acknowledged yet arrives, in any order; refunds still
        // pending get the processor's answer (which may send `charge.refunded`).
        for _ in 0..4 {
            let mut events: Vec<(u8, String, usize)> = Vec::new();
            for (key, payment) in &self.processor.payments {
                for (index, (event, _)) in payment.news.iter().enumerate() {
                    if !self.processor.acked.contains(event) {
                        events.push((0, key.clone(), index));
                    }
                }
                for (index, (event, _)) in payment.refund_news.iter().enumerate() {
                    if !self.processor.acked.contains(event) {
                        events.push((1, key.clone(), index));
                    }
                }
            }
            for (id, dispute) in &self.processor.disputes {
                for (index, (event, _)) in dispute.news.iter().enumerate() {
                    if !self.processor.acked.contains(event) {
                        events.push((2, id.clone(), index));
                    }
                }
            }
            events.shuffle(&mut self.rng);
            let pending: Vec<String> = self
                .model
                .pay
                .refunds
                .values()
                .filter(|refund| refund.state == RefundState::Pending)
                .map(|refund| refund.id.clone())
                .collect();
            if events.is_empty() && pending.is_empty() {
                break;
            }
            // The answers to pending refunds come before the events, or after them (the
            // processor's totals then arrive while the refunds are still pending).
            let answers_first = self.rng.random_bool(0.5);
            if answers_first {
                for id in &pending {
                    let answer = self.refund_decision(id);
                    self.run_logged(Op::Pay(PayOp::FinishRefund(id.clone(), answer)))
                        .await?;
                }
            }
            for (kind, key, index) in events {
                match kind {
                    0 => {
                        let (event, news) = self.processor.payments[&key].news[index].clone();
                        let name = event_type(&news);
                        for topup in self.processor.payments[&key].topups.clone() {
                            self.run_logged(Op::Pay(PayOp::Settle(topup, news.clone())))
                                .await?;
                        }
                        self.run_logged(Op::Pay(PayOp::Event(event.clone(), name.to_owned())))
                            .await?;
                        self.processor.acked.insert(event);
                    }
                    1 => self.deliver_refund_news_by(&key, index, true, true).await?,
                    _ => self.deliver_dispute(&key, index, true, true).await?,
                }
            }
            for id in pending.into_iter().filter(|_| !answers_first) {
                let answer = self.refund_decision(&id);
                self.run_logged(Op::Pay(PayOp::FinishRefund(id, answer))).await?;
            }
        }
        Ok(())
    }

    /// After the drain: the store holds exactly what the processor took, gave back
    /// and lost to disputes.
    pub(crate) fn settled_invariants(&self) -> Check {
        let mut credited = 0;
        for topup in self.model.pay.topups.values() {
            let payment = self
                .processor
                .payment_of(&topup.id)
                .ok_or_else(|| format!("top-up {} unknown to the processor", topup.id))?;
            let paid = payment.state == PState::Succeeded;
            if paid != (topup.status == TopupStatus::Succeeded) {
                return Err(format!(
                    "after the drain top-up {} is {:?} but the processor's payment is {:?}",
                    topup.id, topup.status, payment.state
                ));
            }
            if paid {
                credited += topup.amount;
                let key = &self.processor.of_topup[&topup.id];
                let history = || {
                    let refunds: Vec<String> = self
                        .model
                        .pay
                        .refunds
                        .values()
                        .filter(|refund| refund.topup == topup.id)
                        .map(|refund| {
                            format!(
                                "{} {} {:?} (answer {:?})",
                                refund.id,
                                Micros::new(refund.amount),
                                refund.state,
                                self.processor.refunds.get(&refund.id)
                            )
                        })
                        .collect();
                    let disputes: Vec<String> = self
                        .processor
                        .disputes
                        .iter()
                        .filter(|(_, dispute)| dispute.payment == *key)
                        .map(|(id, dispute)| {
                            format!(
                                "{id} {} news {:?}, store has {:?}",
                                Micros::new(dispute.amount),
                                dispute.news.iter().map(|(_, status)| status).collect::<Vec<_>>(),
                                self.model.pay.disputes.get(id).map(|recorded| recorded.status)
                            )
                        })
                        .collect();
                    format!(
                        "top-up {} of {}: store refunded {} disputed {}; processor refunded {} (charge.refunded totals {:?}), \
                         disputed {}; store refunds {refunds:?}; disputes {disputes:?}",
                        topup.id,
                        Micros::new(topup.amount),
                        Micros::new(topup.refunded),
                        Micros::new(topup.disputed),
                        Micros::new(payment.refunded),
                        payment
                            .refund_news
                            .iter()
                            .map(|(_, total)| Micros::new(*total))
                            .collect::<Vec<_>>(),
                        Micros::new(self.processor.disputed(key)),
                    )
                };
                if topup.refunded != payment.refunded || topup.disputed != self.processor.disputed(key) {
                    return Err(format!(
                        "after the drain the store and the processor disagree: {}",
                        history()
                    ));
                }
            }
        }
        same("money credited vs charged", credited, self.processor.charged())
    }

    /// After every step: the payment state of every account the store knows of equals
    /// the model's, and the invariants hold.
    pub(crate) async fn check_payments(&mut self) -> Check {
        if !self.model.pay.active() {
            return Ok(());
        }
        let store = self.store();
        let touched = std::mem::take(&mut self.touched);
        let ids: Vec<String> = self
            .model
            .pay
            .accounts
            .keys()
            .filter(|id| self.model.accounts.contains_key(*id))
            .cloned()
            .collect();
        for id in &ids {
            let account = account_id(id);
            let what = |field: &str| format!("account {id} {field}");
            let mut model_topups: Vec<TopupRecord> = self
                .model
                .pay
                .topups
                .values()
                .filter(|topup| topup.account == *id)
                .map(ModelTopup::record)
                .collect();
            model_topups.reverse();
            let expected = self.model.rule_record(id);
            if self.check_every_account || touched.contains(id) {
                let record = store
                    .auto_recharge(&account)
                    .await
                    .map_err(|error| format!("auto_recharge of {id}: {error}"))?;
                same(&what("auto top-up"), &record, &expected)?;
                let mut topups = Vec::new();
                let mut cursor = None;
                loop {
                    let page = store
                        .list_topups(&account, PageRequest::new(100, cursor.take()))
                        .await
                        .map_err(|error| format!("list_topups of {id}: {error}"))?;
                    cursor = page.data.last().map(|topup| topup.id.clone());
                    topups.extend(page.data);
                    if !page.has_more {
                        break;
                    }
                }
                same(&what("top-ups"), &topups, &model_topups)?;
            }
            // The invariants, on what the store says (the same as the model, checked above
            // now or when the account last changed).
            let topups = model_topups;
            let record = expected;
            // At most one auto top-up is open.
            let open = topups
                .iter()
                .filter(|topup| topup.source == TopupSource::AutoRecharge && is_open(topup.status))
                .count();
            if open > 1 {
                return Err(format!("account {id} has {open} open auto top-ups"));
            }
            // The cap, unless the customer lowered it or a given-up recharge succeeded late.
            let (index, _, _) = self.model.cycle_window(id);
            if let Some(rule) = self.model.pay.accounts[id].rule.as_ref()
                && record.recharged_this_cycle.get() > rule.cap
                && rule.cap_lowered_in != Some(index)
                && rule.late_success_in != Some(index)
            {
                return Err(format!(
                    "account {id}: auto top-ups brought {} this cycle, over the cap of {}",
                    record.recharged_this_cycle,
                    Micros::new(rule.cap)
                ));
            }
            // Conservation: the balance is what came in minus what went out.
            let model = &self.model.accounts[id];
            let grants: i64 = model
                .journal
                .iter()
                .filter(|line| line.kind == TransactionKind::Grant)
                .map(|line| line.amount)
                .sum();
            let (mut paid, mut back) = (0, 0);
            for topup in &topups {
                if topup.status == TopupStatus::Succeeded {
                    paid += topup.amount.get();
                }
                back += topup.refunded.get() + topup.disputed.get();
            }
            let balance = model.available + model.held;
            let explained = grants + paid - back - model.lifetime_spend;
            if balance != explained {
                return Err(format!(
                    "account {id}: balance {} but grants {} + top-ups {} − refunds and disputes {} − spend {} = {}",
                    Micros::new(balance),
                    Micros::new(grants),
                    Micros::new(paid),
                    Micros::new(back),
                    Micros::new(model.lifetime_spend),
                    Micros::new(explained)
                ));
            }
        }
        // No credit without a charge, no payment credited twice.
        let mut credited_per_payment: HashMap<&str, u32> = HashMap::new();
        let mut credited = 0;
        for topup in self.model.pay.topups.values() {
            if topup.status != TopupStatus::Succeeded {
                continue;
            }
            let key = self
                .processor
                .of_topup
                .get(&topup.id)
                .ok_or_else(|| format!("top-up {} credited but never sent", topup.id))?;
            if self.processor.payments[key].state != PState::Succeeded {
                return Err(format!("top-up {} credited without a charge", topup.id));
            }
            *credited_per_payment.entry(key.as_str()).or_default() += 1;
            if credited_per_payment[key.as_str()] > 1 {
                return Err(format!("processor payment {key} credited twice"));
            }
            credited += topup.amount;
        }
        if credited > self.processor.charged() {
            return Err(format!(
                "{} credited but only {} charged",
                Micros::new(credited),
                Micros::new(self.processor.charged())
            ));
        }
        self.tally_rules();
        Ok(())
    }

    /// How often each rule state was seen, and recharges per threshold crossing.
    fn tally_rules(&mut self) {
        let now = self.clock.now();
        let mut seen = Vec::new();
        let mut crossings = Vec::new();
        for (id, pay) in self.model.pay.accounts.iter_mut() {
            let Some(rule) = pay.rule.as_mut() else {
                continue;
            };
            let Some(account) = self.model.accounts.get(id) else {
                continue;
            };
            seen.push(match &rule.status {
                _ if !rule.enabled => "  rule: off",
                RuleStatus::InFlight(_) => "  rule: in flight",
                RuleStatus::Failed { at, .. } | RuleStatus::ActionRequired { at, .. }
                    if now < *at + COOL_DOWN =>
                {
                    "  rule: cooling down"
                }
                RuleStatus::Failed { .. } | RuleStatus::ActionRequired { .. } => {
                    "  rule: failed, cooled down"
                }
                RuleStatus::CapReached { .. } => "  rule: cap reached",
                RuleStatus::Armed => "  rule: armed",
            });
            if account.available >= rule.threshold && rule.starts_this_crossing > 0 {
                crossings.push(match rule.starts_this_crossing {
                    1 => "auto top-ups started in one crossing: 1",
                    2 => "auto top-ups started in one crossing: 2",
                    _ => "auto top-ups started in one crossing: 3+",
                });
                rule.starts_this_crossing = 0;
            }
        }
        for what in seen {
            self.tally(what);
        }
        for what in crossings {
            self.model.count(what);
        }
    }
}
