//! Auto Top-Up on SQLite: the rule rows and the auto top-ups they start.
//! Decisions come from `crate::recharge`. The writer runs one job at a time, so an
//! operation sees and writes its account alone; the unique indexes on `topups`
//! are the backstop.

use rusqlite::{Connection, OptionalExtension, params};
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::{
    AccountId, Actor, BillingCycle, CycleAnchor, Micros, RechargeBlocked, Timestamp, TopupLimits,
    TopupOutcome, TopupSource,
};

use super::ops;
use super::payments::{self, TOPUP_COLUMNS, TOPUP_FROM, load_topup, topup_row};
use super::rows;
use super::writer::WriteContext;
use crate::decide::not_found;
use crate::recharge::{
    BeginPlan, MAX_AUTO_RECHARGE_BATCH, RuleColumns, RuleState, after_card_changed, after_card_removed,
    apply_change, change_audit, cycle_of, plan_begin, read_sequence, record, resolve, skip_sequence,
    status_code, stored_sequence, topup_fingerprint, topup_key,
};
use crate::{
    AutoRechargeChange, AutoRechargeRecord, AutoRechargeStart, StoreError, StoreResult, TopupRecord, new_id,
};

/// Most sequences one start skips because customers' top-ups took their keys.
const MAX_SKIPPED_SEQUENCES: usize = 8;

fn created_at(connection: &Connection, account: &AccountId) -> StoreResult<Timestamp> {
    let created: Option<i64> = connection
        .prepare_cached("SELECT created_at FROM accounts WHERE id = ?1")?
        .query_row(params![account.as_str()], |row| row.get(0))
        .optional()?;
    created
        .map(from_unix_micros)
        .ok_or_else(|| not_found("account", account))
}

/// The account's saved rule and when it last changed.
fn load_rule(connection: &Connection, account: &AccountId) -> StoreResult<Option<(RuleState, Timestamp)>> {
    let raw = connection
        .prepare_cached(
            "SELECT enabled, threshold_micros, target_micros, monthly_cap_micros, status, status_reason, \
             status_at, blocked_until, last_sequence, in_flight_sequence, updated_at \
             FROM auto_recharge_rules WHERE account_id = ?1",
        )?
        .query_row(params![account.as_str()], |row| {
            Ok((
                row.get::<_, bool>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, Option<i64>>(6)?,
                row.get::<_, Option<i64>>(7)?,
                row.get::<_, i64>(8)?,
                row.get::<_, Option<i64>>(9)?,
                row.get::<_, i64>(10)?,
            ))
        })
        .optional()?;
    let Some(raw) = raw else {
        return Ok(None);
    };
    let status = status_code(&raw.4)
        .ok_or_else(|| StoreError::Database(format!("stored auto top-up status `{}` is not valid", raw.4)))?;
    let columns = RuleColumns {
        enabled: raw.0,
        threshold: raw.1,
        target: raw.2,
        monthly_cap: raw.3,
        status,
        status_reason: raw.5,
        status_at: raw.6,
        blocked_until: raw.7,
        last_sequence: raw.8,
        in_flight_sequence: raw.9,
    };
    Ok(Some((
        RuleState::from_columns(account.as_str(), &columns)?,
        from_unix_micros(raw.10),
    )))
}

fn save_rule(
    context: &WriteContext<'_>,
    account: &AccountId,
    state: &RuleState,
    created_at: Timestamp,
) -> StoreResult<()> {
    let columns = state.to_columns(CycleAnchor::from_created_at(created_at))?;
    context
        .connection
        .prepare_cached(
            "INSERT INTO auto_recharge_rules (account_id, enabled, threshold_micros, target_micros, \
             monthly_cap_micros, status, status_reason, status_at, blocked_until, last_sequence, \
             in_flight_sequence, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12) \
             ON CONFLICT (account_id) DO UPDATE SET enabled = excluded.enabled, \
             threshold_micros = excluded.threshold_micros, target_micros = excluded.target_micros, \
             monthly_cap_micros = excluded.monthly_cap_micros, status = excluded.status, \
             status_reason = excluded.status_reason, status_at = excluded.status_at, \
             blocked_until = excluded.blocked_until, last_sequence = excluded.last_sequence, \
             in_flight_sequence = excluded.in_flight_sequence, updated_at = excluded.updated_at",
        )?
        .execute(params![
            account.as_str(),
            columns.enabled,
            columns.threshold,
            columns.target,
            columns.monthly_cap,
            columns.status,
            columns.status_reason,
            columns.status_at,
            columns.blocked_until,
            columns.last_sequence,
            columns.in_flight_sequence,
            to_unix_micros(context.now),
        ])?;
    Ok(())
}

/// What succeeded auto top-ups of the account charged in `cycle`.
fn recharged_in(connection: &Connection, account: &AccountId, cycle: BillingCycle) -> StoreResult<Micros> {
    let sum: i64 = connection
        .prepare_cached(
            "SELECT COALESCE(SUM(amount_micros), 0) FROM topups WHERE account_id = ?1 \
             AND source = 'auto_recharge' AND status = 'succeeded' AND succeeded_at >= ?2 AND succeeded_at < ?3",
        )?
        .query_row(
            params![
                account.as_str(),
                to_unix_micros(cycle.start),
                to_unix_micros(cycle.end)
            ],
            |row| row.get(0),
        )?;
    Ok(Micros::new(sum))
}

/// The sequence of the account's open auto top-up, if it has one.
fn open_sequence(connection: &Connection, account: &AccountId) -> StoreResult<Option<u64>> {
    let sequence: Option<i64> = connection
        .prepare_cached(
            "SELECT recharge_sequence FROM topups WHERE account_id = ?1 \
             AND source = 'auto_recharge' AND status IN ('pending', 'requires_action')",
        )?
        .query_row(params![account.as_str()], |row| row.get(0))
        .optional()?;
    sequence.map(read_sequence).transpose()
}

pub fn auto_recharge(
    connection: &Connection,
    account: &AccountId,
    now: Timestamp,
) -> StoreResult<AutoRechargeRecord> {
    let cycle = cycle_of(created_at(connection, account)?, now);
    let saved = load_rule(connection, account)?;
    let recharged = recharged_in(connection, account, cycle)?;
    Ok(record(account.clone(), saved, recharged, cycle))
}

pub fn set_auto_recharge(
    context: &WriteContext<'_>,
    account: &AccountId,
    change: &AutoRechargeChange,
    actor: &Actor,
) -> StoreResult<AutoRechargeRecord> {
    let created = created_at(context.connection, account)?;
    let current = load_rule(context.connection, account)?.map(|(state, _)| state);
    let has_card = payments::payment_profile(context.connection, account)?
        .card
        .is_some();
    if let Some(next) = apply_change(current.as_ref(), change, has_card)? {
        save_rule(context, account, &next, created)?;
        let (action, before, after) = change_audit(current.as_ref(), &next);
        ops::audit(context, actor, action, account, before, after)?;
    }
    auto_recharge(context.connection, account, context.now)
}

pub fn due_auto_recharges(
    connection: &Connection,
    now: Timestamp,
    limit: usize,
) -> StoreResult<Vec<AccountId>> {
    let limit = limit.min(MAX_AUTO_RECHARGE_BATCH) as i64;
    let ids: Vec<String> = connection
        .prepare_cached(
            "SELECT r.account_id FROM auto_recharge_rules r JOIN accounts a ON a.id = r.account_id \
             WHERE r.enabled = 1 AND r.in_flight_sequence IS NULL \
             AND (r.blocked_until IS NULL OR r.blocked_until <= ?1) \
             AND a.available_micros < r.threshold_micros \
             AND NOT EXISTS (SELECT 1 FROM topups t WHERE t.account_id = r.account_id \
                 AND t.source = 'auto_recharge' AND t.status IN ('pending', 'requires_action')) \
             ORDER BY r.account_id LIMIT ?2",
        )?
        .query_map(params![to_unix_micros(now), limit], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    ids.iter().map(|id| rows::account_id(id)).collect()
}

/// True when a top-up of the account already uses `key`.
fn key_taken(connection: &Connection, account: &AccountId, key: &str) -> StoreResult<bool> {
    Ok(connection
        .prepare_cached("SELECT 1 FROM topups WHERE account_id = ?1 AND idempotency_key = ?2")?
        .query_row(params![account.as_str(), key], |_| Ok(()))
        .optional()?
        .is_some())
}

pub fn begin_auto_recharge(
    context: &WriteContext<'_>,
    account: &AccountId,
    limits: TopupLimits,
) -> StoreResult<AutoRechargeStart> {
    let connection = context.connection;
    // Holds whose time ran out give their funds back first, so the amount is right.
    let stored = if rows::has_due_holds(connection, account, context.now)? {
        let stored = ops::load_for_write(context, account)?;
        rows::save_account(connection, &stored)?;
        stored
    } else {
        rows::load_account(connection, account, context.now)?.ok_or_else(|| not_found("account", account))?
    };
    let Some((mut state, _)) = load_rule(connection, account)? else {
        return Ok(AutoRechargeStart::NotDue);
    };
    let created = stored.record.created_at;
    let cycle = cycle_of(created, context.now);
    let recharged = recharged_in(connection, account, cycle)?;
    let open = open_sequence(connection, account)?;
    for _ in 0..MAX_SKIPPED_SEQUENCES {
        let plan = plan_begin(
            Some(&state),
            stored.record.balances.available,
            open,
            recharged,
            cycle,
            context.now,
            limits,
        )?;
        let (rule, sequence, amount) = match plan {
            BeginPlan::NotDue => return Ok(AutoRechargeStart::NotDue),
            BeginPlan::Blocked(blocked) => return Ok(AutoRechargeStart::Blocked(blocked)),
            BeginPlan::CapReached(rule) => {
                if let Some(rule) = rule {
                    save_rule(context, account, &state.with_rule(rule), created)?;
                }
                return Ok(AutoRechargeStart::Blocked(RechargeBlocked::CapReached));
            }
            BeginPlan::Start {
                rule,
                sequence,
                amount,
            } => (rule, sequence, amount),
        };
        let key = topup_key(sequence);
        if key_taken(connection, account, &key)? {
            // A customer's own top-up took this key: the recharge gets the next number.
            state = state.with_rule(skip_sequence(&state.rule, sequence));
            continue;
        }
        let id = new_id("top");
        let now = to_unix_micros(context.now);
        let inserted = connection
            .prepare_cached(
                "INSERT INTO topups (id, account_id, amount_micros, source, status, idempotency_key, \
                 request_fingerprint, created_at, updated_at, recharge_sequence) \
                 VALUES (?1, ?2, ?3, 'auto_recharge', 'pending', ?4, ?5, ?6, ?6, ?7) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                id,
                account.as_str(),
                amount.get().get(),
                key,
                topup_fingerprint(sequence, amount),
                now,
                stored_sequence(sequence)?,
            ])?;
        if inserted == 0 {
            // The unique index: another auto top-up of the account is open.
            return match open_sequence(connection, account)? {
                Some(sequence) => Ok(AutoRechargeStart::Blocked(RechargeBlocked::InFlight { sequence })),
                None => Err(StoreError::Database(format!(
                    "auto top-up {key} of `{account}` conflicts with a stored top-up"
                ))),
            };
        }
        save_rule(context, account, &state.with_rule(rule), created)?;
        return Ok(AutoRechargeStart::Started(Box::new(load_topup(connection, &id)?)));
    }
    Err(StoreError::Database(format!(
        "{MAX_SKIPPED_SEQUENCES} recharge keys of `{account}` are taken by other top-ups"
    )))
}

pub fn open_auto_recharges(connection: &Connection, limit: usize) -> StoreResult<Vec<TopupRecord>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {TOPUP_COLUMNS} FROM {TOPUP_FROM} \
         WHERE t.source = 'auto_recharge' AND t.status IN ('pending', 'requires_action') \
         ORDER BY t.created_at, t.id LIMIT ?1"
    ))?;
    let raw = statement
        .query_map(params![limit.min(MAX_AUTO_RECHARGE_BATCH) as i64], topup_row)?
        .collect::<Result<Vec<_>, _>>()?;
    raw.into_iter().collect()
}

/// Resolves the rule when `topup`, just settled with `outcome`, is its recharge in flight.
pub(super) fn after_settle(
    context: &WriteContext<'_>,
    topup: &TopupRecord,
    outcome: &TopupOutcome,
) -> StoreResult<()> {
    if topup.source != TopupSource::AutoRecharge {
        return Ok(());
    }
    let Some((state, _)) = load_rule(context.connection, &topup.account)? else {
        return Ok(());
    };
    if let Some(next) = resolve(&state, topup, outcome, context.now) {
        let created = created_at(context.connection, &topup.account)?;
        save_rule(context, &topup.account, &next, created)?;
    }
    Ok(())
}

/// Re-arms the rule after the account's card was replaced.
pub(super) fn after_new_card(context: &WriteContext<'_>, account: &AccountId) -> StoreResult<()> {
    let Some((state, _)) = load_rule(context.connection, account)? else {
        return Ok(());
    };
    if let Some(next) = after_card_changed(&state) {
        let created = created_at(context.connection, account)?;
        save_rule(context, account, &next, created)?;
    }
    Ok(())
}

/// Switches the rule off after the account's card was removed (audited).
pub(super) fn after_card_gone(
    context: &WriteContext<'_>,
    account: &AccountId,
    actor: &Actor,
) -> StoreResult<()> {
    let Some((state, _)) = load_rule(context.connection, account)? else {
        return Ok(());
    };
    if let Some(next) = after_card_removed(&state) {
        let created = created_at(context.connection, account)?;
        save_rule(context, account, &next, created)?;
        let (action, before, after) = change_audit(Some(&state), &next);
        ops::audit(context, actor, action, account, before, after)?;
    }
    Ok(())
}
