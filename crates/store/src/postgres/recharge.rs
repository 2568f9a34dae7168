//! Auto Top-Up on PostgreSQL: the rule rows and the auto top-ups they start; the
//! twin of `sqlite/recharge.rs`, with the same decisions (from `crate::recharge`).
//!
//! Every write takes the account's row lock first, so that two processes asking to
//! begin a recharge for one account run one after the other and the second sees the
//! first's recharge in flight. The partial unique index on open auto top-ups is the
//! backstop: an insert it refuses (`ON CONFLICT DO NOTHING`) reads as a recharge in
//! flight, never as an error.

use super::prepared::Prepared as _;
use deadpool_postgres::GenericClient;
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::{
    AccountId, Actor, BillingCycle, CycleAnchor, Micros, RechargeBlocked, Timestamp, TopupLimits,
    TopupOutcome, TopupSource,
};

use super::PgResult;
use super::ops::{self, Context};
use super::payments::{self, TOPUP_COLUMNS, TOPUP_FROM, load_topup, topup_row};
use super::rows;
use crate::decide::not_found;
use crate::recharge::{
    BeginPlan, MAX_AUTO_RECHARGE_BATCH, RuleColumns, RuleState, after_card_changed, after_card_removed,
    apply_change, change_audit, cycle_of, plan_begin, read_sequence, record, resolve, skip_sequence,
    status_code, stored_sequence, topup_fingerprint, topup_key,
};
use crate::{AutoRechargeChange, AutoRechargeRecord, AutoRechargeStart, StoreError, TopupRecord, new_id};

/// Most sequences one start skips because customers' top-ups took their keys.
const MAX_SKIPPED_SEQUENCES: usize = 8;

async fn created_at<C: GenericClient + Sync>(client: &C, account: &AccountId) -> PgResult<Timestamp> {
    let row = client
        .query_opt_cached(
            "SELECT created_at FROM accounts WHERE id = $1",
            &[&account.as_str()],
        )
        .await?
        .ok_or_else(|| not_found("account", account))?;
    Ok(from_unix_micros(row.try_get(0)?))
}

/// Takes the account's row lock; an account that does not exist is not found.
async fn lock<C: GenericClient + Sync>(client: &C, account: &AccountId) -> PgResult<()> {
    if rows::lock_account(client, account.as_str()).await? {
        Ok(())
    } else {
        Err(not_found("account", account).into())
    }
}

/// The account's saved rule and when it last changed.
async fn load_rule<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
) -> PgResult<Option<(RuleState, Timestamp)>> {
    let Some(row) = client
        .query_opt_cached(
            "SELECT enabled, threshold_micros, target_micros, monthly_cap_micros, status, status_reason, \
             status_at, blocked_until, last_sequence, in_flight_sequence, updated_at \
             FROM auto_recharge_rules WHERE account_id = $1",
            &[&account.as_str()],
        )
        .await?
    else {
        return Ok(None);
    };
    let code: String = row.try_get(4)?;
    let status = status_code(&code)
        .ok_or_else(|| StoreError::Database(format!("stored auto top-up status `{code}` is not valid")))?;
    let columns = RuleColumns {
        enabled: row.try_get(0)?,
        threshold: row.try_get(1)?,
        target: row.try_get(2)?,
        monthly_cap: row.try_get(3)?,
        status,
        status_reason: row.try_get(5)?,
        status_at: row.try_get(6)?,
        blocked_until: row.try_get(7)?,
        last_sequence: row.try_get(8)?,
        in_flight_sequence: row.try_get(9)?,
    };
    Ok(Some((
        RuleState::from_columns(account.as_str(), &columns)?,
        from_unix_micros(row.try_get(10)?),
    )))
}

/// Writes the rule. The caller holds the account's lock.
async fn save_rule<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    state: &RuleState,
    created_at: Timestamp,
) -> PgResult<()> {
    let columns = state.to_columns(CycleAnchor::from_created_at(created_at))?;
    client
        .execute_cached(
            "INSERT INTO auto_recharge_rules (account_id, enabled, threshold_micros, target_micros, \
             monthly_cap_micros, status, status_reason, status_at, blocked_until, last_sequence, \
             in_flight_sequence, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
             ON CONFLICT (account_id) DO UPDATE SET enabled = EXCLUDED.enabled, \
             threshold_micros = EXCLUDED.threshold_micros, target_micros = EXCLUDED.target_micros, \
             monthly_cap_micros = EXCLUDED.monthly_cap_micros, status = EXCLUDED.status, \
             status_reason = EXCLUDED.status_reason, status_at = EXCLUDED.status_at, \
             blocked_until = EXCLUDED.blocked_until, last_sequence = EXCLUDED.last_sequence, \
             in_flight_sequence = EXCLUDED.in_flight_sequence, updated_at = EXCLUDED.updated_at",
            &[
                &account.as_str(),
                &columns.enabled,
                &columns.threshold,
                &columns.target,
                &columns.monthly_cap,
                &columns.status,
                &columns.status_reason,
                &columns.status_at,
                &columns.blocked_until,
                &columns.last_sequence,
                &columns.in_flight_sequence,
                &to_unix_micros(context.now),
            ],
        )
        .await?;
    Ok(())
}

/// What succeeded auto top-ups of the account charged in `cycle`.
async fn recharged_in<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
    cycle: BillingCycle,
) -> PgResult<Micros> {
    let row = client
        .query_one_cached(
            "SELECT CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) FROM topups WHERE account_id = $1 \
             AND source = 'auto_recharge' AND status = 'succeeded' AND succeeded_at >= $2 AND succeeded_at < $3",
            &[
                &account.as_str(),
                &to_unix_micros(cycle.start),
                &to_unix_micros(cycle.end),
            ],
        )
        .await?;
    Ok(Micros::new(row.try_get(0)?))
}

/// The sequence of the account's open auto top-up, if it has one.
async fn open_sequence<C: GenericClient + Sync>(client: &C, account: &AccountId) -> PgResult<Option<u64>> {
    let row = client
        .query_opt_cached(
            "SELECT recharge_sequence FROM topups WHERE account_id = $1 \
             AND source = 'auto_recharge' AND status IN ('pending', 'requires_action')",
            &[&account.as_str()],
        )
        .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let sequence: Option<i64> = row.try_get(0)?;
            Ok(sequence.map(read_sequence).transpose()?)
        }
    }
}

/// The account's Auto Top-Up as it stands at `now`.
pub async fn auto_recharge<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
    now: Timestamp,
) -> PgResult<AutoRechargeRecord> {
    let cycle = cycle_of(created_at(client, account).await?, now);
    let saved = load_rule(client, account).await?;
    let recharged = recharged_in(client, account, cycle).await?;
    Ok(record(account.clone(), saved, recharged, cycle))
}

/// Saves Auto Top-Up settings under the account's lock.
pub async fn set_auto_recharge<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    change: &AutoRechargeChange,
    actor: &Actor,
) -> PgResult<AutoRechargeRecord> {
    lock(client, account).await?;
    let created = created_at(client, account).await?;
    let current = load_rule(client, account).await?.map(|(state, _)| state);
    let has_card = payments::payment_profile(client, account).await?.card.is_some();
    if let Some(next) = apply_change(current.as_ref(), change, has_card)? {
        save_rule(client, context, account, &next, created).await?;
        let (action, before, after) = change_audit(current.as_ref(), &next);
        ops::audit(client, context, actor, action, account, before, after).await?;
    }
    auto_recharge(client, account, context.now).await
}

/// Accounts whose rule is due at `now` (see the trait).
pub async fn due_auto_recharges<C: GenericClient + Sync>(
    client: &C,
    now: Timestamp,
    limit: usize,
) -> PgResult<Vec<AccountId>> {
    let limit = i64::try_from(limit.min(MAX_AUTO_RECHARGE_BATCH)).unwrap_or(0);
    client
        .query_cached(
            "SELECT r.account_id FROM auto_recharge_rules r JOIN accounts a ON a.id = r.account_id \
             WHERE r.enabled AND r.in_flight_sequence IS NULL \
             AND (r.blocked_until IS NULL OR r.blocked_until <= $1) \
             AND a.available_micros < r.threshold_micros \
             AND NOT EXISTS (SELECT 1 FROM topups t WHERE t.account_id = r.account_id \
                 AND t.source = 'auto_recharge' AND t.status IN ('pending', 'requires_action')) \
             ORDER BY r.account_id LIMIT $2",
            &[&to_unix_micros(now), &limit],
        )
        .await?
        .iter()
        .map(|row| -> PgResult<AccountId> {
            let id: String = row.try_get(0)?;
            Ok(rows::account_id(&id)?)
        })
        .collect()
}

/// True when a top-up of the account already uses `key`.
async fn key_taken<C: GenericClient + Sync>(client: &C, account: &AccountId, key: &str) -> PgResult<bool> {
    Ok(client
        .query_opt_cached(
            "SELECT 1 FROM topups WHERE account_id = $1 AND idempotency_key = $2",
            &[&account.as_str(), &key],
        )
        .await?
        .is_some())
}

/// Starts a recharge when one is due, under the account's lock.
pub async fn begin_auto_recharge<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    limits: TopupLimits,
) -> PgResult<AutoRechargeStart> {
    lock(client, account).await?;
    // Holds whose time ran out give their funds back first, so the amount is right.
    let stored = if rows::has_due_holds(client, account, context.now).await? {
        let stored = ops::load_for_write(client, context, account).await?;
        rows::save_account(client, &stored).await?;
        stored
    } else {
        rows::load_account(client, account, context.now)
            .await?
            .ok_or_else(|| not_found("account", account))?
    };
    let Some((mut state, _)) = load_rule(client, account).await? else {
        return Ok(AutoRechargeStart::NotDue);
    };
    let created = stored.record.created_at;
    let cycle = cycle_of(created, context.now);
    let recharged = recharged_in(client, account, cycle).await?;
    let open = open_sequence(client, account).await?;
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
                    save_rule(client, context, account, &state.with_rule(rule), created).await?;
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
        if key_taken(client, account, &key).await? {
            // A customer's own top-up took this key: the recharge gets the next number.
            state = state.with_rule(skip_sequence(&state.rule, sequence));
            continue;
        }
        let id = new_id("top");
        let now = to_unix_micros(context.now);
        let inserted = client
            .execute_cached(
                "INSERT INTO topups (id, account_id, amount_micros, source, status, idempotency_key, \
                 request_fingerprint, created_at, updated_at, recharge_sequence) \
                 VALUES ($1, $2, $3, 'auto_recharge', 'pending', $4, $5, $6, $6, $7) ON CONFLICT DO NOTHING",
                &[
                    &id,
                    &account.as_str(),
                    &amount.get().get(),
                    &key,
                    &topup_fingerprint(sequence, amount),
                    &now,
                    &stored_sequence(sequence)?,
                ],
            )
            .await?;
        if inserted == 0 {
            // The unique index: another auto top-up of the account is open (a writer that
            // did not take the lock, which none does; the backstop all the same).
            return match open_sequence(client, account).await? {
                Some(sequence) => Ok(AutoRechargeStart::Blocked(RechargeBlocked::InFlight { sequence })),
                None => Err(StoreError::Database(format!(
                    "auto top-up {key} of `{account}` conflicts with a stored top-up"
                ))
                .into()),
            };
        }
        save_rule(client, context, account, &state.with_rule(rule), created).await?;
        return Ok(AutoRechargeStart::Started(Box::new(
            load_topup(client, &id).await?,
        )));
    }
    Err(StoreError::Database(format!(
        "{MAX_SKIPPED_SEQUENCES} recharge keys of `{account}` are taken by other top-ups"
    ))
    .into())
}

/// Open auto top-ups, oldest first.
pub async fn open_auto_recharges<C: GenericClient + Sync>(
    client: &C,
    limit: usize,
) -> PgResult<Vec<TopupRecord>> {
    let limit = i64::try_from(limit.min(MAX_AUTO_RECHARGE_BATCH)).unwrap_or(0);
    client
        .query_cached(
            &format!(
                "SELECT {TOPUP_COLUMNS} FROM {TOPUP_FROM} \
                 WHERE t.source = 'auto_recharge' AND t.status IN ('pending', 'requires_action') \
                 ORDER BY t.created_at, t.id LIMIT $1"
            ),
            &[&limit],
        )
        .await?
        .iter()
        .map(topup_row)
        .collect()
}

/// Resolves the rule when `topup`, just settled with `outcome`, is its recharge in
/// flight. The caller holds the account's lock.
pub(super) async fn after_settle<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    topup: &TopupRecord,
    outcome: &TopupOutcome,
) -> PgResult<()> {
    if topup.source != TopupSource::AutoRecharge {
        return Ok(());
    }
    let Some((state, _)) = load_rule(client, &topup.account).await? else {
        return Ok(());
    };
    if let Some(next) = resolve(&state, topup, outcome, context.now) {
        let created = created_at(client, &topup.account).await?;
        save_rule(client, context, &topup.account, &next, created).await?;
    }
    Ok(())
}

/// Re-arms the rule after the account's card was replaced. The caller holds the lock.
pub(super) async fn after_new_card<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
) -> PgResult<()> {
    let Some((state, _)) = load_rule(client, account).await? else {
        return Ok(());
    };
    if let Some(next) = after_card_changed(&state) {
        let created = created_at(client, account).await?;
        save_rule(client, context, account, &next, created).await?;
    }
    Ok(())
}

/// Switches the rule off after the account's card was removed (audited). The caller
/// holds the lock.
pub(super) async fn after_card_gone<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    actor: &Actor,
) -> PgResult<()> {
    let Some((state, _)) = load_rule(client, account).await? else {
        return Ok(());
    };
    if let Some(next) = after_card_removed(&state) {
        let created = created_at(client, account).await?;
        save_rule(client, context, account, &next, created).await?;
        let (action, before, after) = change_audit(Some(&state), &next);
        ops::audit(client, context, actor, action, account, before, after).await?;
    }
    Ok(())
}
