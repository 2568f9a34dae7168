//! The outbox on PostgreSQL: events written with their change, endpoints, and deliveries.
//!
//! Several processes share these tables: an event's `sequence` is taken while its
//! account's row is locked, so one account's events are numbered in commit order, and a
//! delivery is claimed by a conditional UPDATE of its lease, so two senders never hold
//! the same one.

use super::prepared::Prepared as _;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::{AccountId, Actor, DeliveryPolicy, Micros, Timestamp};

use super::PgResult;
use super::ops::{self, Context};
use super::rows::{account_id, lock_account};
use crate::decide::not_found;
use crate::events::{
    MAX_DELIVERY_BATCH, PendingEvent, after_attempt, endpoint_audit, endpoint_receives_sql, parse_kind,
    parse_selection, selection_text,
};
use crate::{
    DeliveryAttempt, DeliveryRecord, DeliveryStatus, DueDelivery, EventFilter, EventRecord,
    NewWebhookEndpoint, Page, PageRequest, StoreError, WebhookEndpointRecord, new_id,
};

const EVENT_COLUMNS: &str = "e.sequence, e.id, e.type, e.account_id, e.reference_id, e.amount_micros, e.balance_micros, e.detail, e.created_at";

fn event_from(row: &Row, first: usize) -> PgResult<EventRecord> {
    let kind: String = row.try_get(first + 2)?;
    let account: String = row.try_get(first + 3)?;
    Ok(EventRecord {
        sequence: row.try_get(first)?,
        id: row.try_get(first + 1)?,
        kind: parse_kind(&kind)?,
        account: account_id(&account)?,
        reference: row.try_get(first + 4)?,
        amount: row.try_get::<_, Option<i64>>(first + 5)?.map(Micros::new),
        balance: row.try_get::<_, Option<i64>>(first + 6)?.map(Micros::new),
        detail: row.try_get(first + 7)?,
        created_at: from_unix_micros(row.try_get(first + 8)?),
    })
}

/// Writes `events` and one pending delivery per endpoint that selects each, in the
/// caller's transaction, under each account's row lock.
pub(super) async fn insert_events<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    events: &[PendingEvent],
) -> PgResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let now = to_unix_micros(context.now);
    let fan_out = format!(
        "INSERT INTO event_deliveries (endpoint_id, event_sequence, account_id, status, next_attempt_at) \
         SELECT w.id, $1, $2, 'pending', $3 FROM webhook_endpoints w \
         WHERE w.disabled_at IS NULL AND {}",
        endpoint_receives_sql("$4::TEXT")
    );
    for event in events {
        // Usually held already by the change itself; taken here so that the order of
        // sequences is the order of commits for every path that records an event.
        lock_account(client, event.account.as_str()).await?;
        let row = client
            .query_one_cached(
                "INSERT INTO events (id, type, account_id, reference_id, amount_micros, balance_micros, detail, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING sequence",
                &[
                    &new_id("evt"),
                    &event.kind.code(),
                    &event.account.as_str(),
                    &event.reference,
                    &event.amount.map(Micros::get),
                    &event.balance.map(Micros::get),
                    &event.detail,
                    &now,
                ],
            )
            .await?;
        let sequence: i64 = row.try_get(0)?;
        client
            .execute_cached(
                &fan_out,
                &[&sequence, &event.account.as_str(), &now, &event.kind.code()],
            )
            .await?;
    }
    Ok(())
}

async fn cursor_sequence<C: GenericClient + Sync>(client: &C, page: &PageRequest) -> PgResult<i64> {
    match &page.starting_after {
        None => Ok(i64::MAX),
        Some(cursor) => Ok(client
            .query_opt_cached("SELECT sequence FROM events WHERE id = $1", &[cursor])
            .await?
            .ok_or_else(|| StoreError::InvalidCursor(cursor.clone()))?
            .try_get(0)?),
    }
}

/// Events newest first, filtered, after the cursor (an event id).
pub async fn list_events<C: GenericClient + Sync>(
    client: &C,
    filter: &EventFilter,
    page: &PageRequest,
) -> PgResult<Page<EventRecord>> {
    let before = cursor_sequence(client, page).await?;
    let rows = client
        .query_cached(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events e WHERE e.sequence < $1 \
                 AND ($2::TEXT IS NULL OR e.account_id = $2) AND ($3::TEXT IS NULL OR e.type = $3) \
                 ORDER BY e.sequence DESC LIMIT $4"
            ),
            &[
                &before,
                &filter.account.as_ref().map(AccountId::as_str),
                &filter.kind.map(|kind| kind.code()),
                &(i64::from(page.limit) + 1),
            ],
        )
        .await?;
    let mut data = rows
        .iter()
        .map(|row| event_from(row, 0))
        .collect::<PgResult<Vec<_>>>()?;
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}

/// One event by id.
pub async fn event<C: GenericClient + Sync>(client: &C, id: &str) -> PgResult<EventRecord> {
    let row = client
        .query_opt_cached(
            &format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| not_found("event", id))?;
    event_from(&row, 0)
}

const ENDPOINT_COLUMNS: &str = "id, url, secret, event_types, created_at, disabled_at";

fn endpoint_from(row: &Row) -> PgResult<WebhookEndpointRecord> {
    let events: String = row.try_get(3)?;
    Ok(WebhookEndpointRecord {
        id: row.try_get(0)?,
        url: row.try_get(1)?,
        secret: row.try_get(2)?,
        events: parse_selection(&events)?,
        created_at: from_unix_micros(row.try_get(4)?),
        disabled_at: row.try_get::<_, Option<i64>>(5)?.map(from_unix_micros),
    })
}

/// Registers an endpoint (audited); it receives events recorded from now on.
pub async fn create_endpoint<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    endpoint: &NewWebhookEndpoint,
) -> PgResult<WebhookEndpointRecord> {
    client
        .execute_cached(
            "INSERT INTO webhook_endpoints (id, url, secret, event_types, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[
                &endpoint.id,
                &endpoint.url,
                &endpoint.secret,
                &selection_text(&endpoint.events),
                &to_unix_micros(context.now),
            ],
        )
        .await?;
    ops::audit_global(
        client,
        context,
        &endpoint.actor,
        "webhook_endpoint.created",
        None,
        Some(format!(
            "id={} {}",
            endpoint.id,
            endpoint_audit(&endpoint.url, &endpoint.events)
        )),
    )
    .await?;
    webhook_endpoint(client, &endpoint.id).await
}

/// Switches an endpoint off (audited): its pending deliveries stop.
pub async fn disable_endpoint<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    id: &str,
    actor: &Actor,
) -> PgResult<WebhookEndpointRecord> {
    let row = client
        .query_opt_cached(
            &format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?
        .ok_or_else(|| not_found("webhook endpoint", id))?;
    let endpoint = endpoint_from(&row)?;
    if endpoint.disabled_at.is_some() {
        return Ok(endpoint);
    }
    client
        .execute_cached(
            "UPDATE webhook_endpoints SET disabled_at = $2 WHERE id = $1",
            &[&id, &to_unix_micros(context.now)],
        )
        .await?;
    client
        .execute_cached(
            "UPDATE event_deliveries SET status = 'failed', last_error = 'endpoint disabled' \
             WHERE endpoint_id = $1 AND status = 'pending'",
            &[&id],
        )
        .await?;
    ops::audit_global(
        client,
        context,
        actor,
        "webhook_endpoint.disabled",
        Some(format!(
            "id={id} {}",
            endpoint_audit(&endpoint.url, &endpoint.events)
        )),
        Some(format!("id={id} disabled")),
    )
    .await?;
    webhook_endpoint(client, id).await
}

/// One endpoint by id.
pub async fn webhook_endpoint<C: GenericClient + Sync>(
    client: &C,
    id: &str,
) -> PgResult<WebhookEndpointRecord> {
    let row = client
        .query_opt_cached(
            &format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| not_found("webhook endpoint", id))?;
    endpoint_from(&row)
}

/// Every endpoint, oldest first (an operator registers a handful).
pub async fn list_endpoints<C: GenericClient + Sync>(client: &C) -> PgResult<Vec<WebhookEndpointRecord>> {
    let rows = client
        .query_cached(
            &format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id LIMIT 1000"),
            &[],
        )
        .await?;
    rows.iter().map(endpoint_from).collect()
}

/// Claims up to `limit` due deliveries until `lease_until`: for each endpoint and account
/// only the oldest pending one, so an account's events arrive in order. The lease is
/// taken by one UPDATE whose conditions are checked again on the locked row, so a
/// delivery two processes race for goes to one of them.
pub async fn claim_deliveries<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    lease_until: Timestamp,
    limit: usize,
) -> PgResult<Vec<DueDelivery>> {
    let now = to_unix_micros(context.now);
    let rows = client
        .query_cached(
            &format!(
                "WITH claimed AS ( \
                   UPDATE event_deliveries d SET leased_until = $3 \
                   WHERE (d.endpoint_id, d.event_sequence) IN ( \
                     SELECT c.endpoint_id, c.event_sequence FROM event_deliveries c \
                     WHERE c.status = 'pending' AND c.next_attempt_at <= $1 \
                     AND NOT EXISTS (SELECT 1 FROM event_deliveries earlier \
                       WHERE earlier.endpoint_id = c.endpoint_id AND earlier.account_id = c.account_id \
                       AND earlier.status = 'pending' AND earlier.event_sequence < c.event_sequence) \
                     ORDER BY c.event_sequence LIMIT $2) \
                   AND d.status = 'pending' AND (d.leased_until IS NULL OR d.leased_until <= $1) \
                   RETURNING d.endpoint_id, d.event_sequence, d.attempts) \
                 SELECT claimed.endpoint_id, w.url, w.secret, claimed.attempts, {EVENT_COLUMNS} \
                 FROM claimed JOIN webhook_endpoints w ON w.id = claimed.endpoint_id \
                 JOIN events e ON e.sequence = claimed.event_sequence ORDER BY e.sequence"
            ),
            &[
                &now,
                &(limit.min(MAX_DELIVERY_BATCH) as i64),
                &to_unix_micros(lease_until),
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let attempts: i64 = row.try_get(3)?;
            Ok(DueDelivery {
                endpoint: row.try_get(0)?,
                url: row.try_get(1)?,
                secret: row.try_get(2)?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                event: event_from(row, 4)?,
            })
        })
        .collect()
}

/// Records one attempt of a claimed delivery, and the attempt in the log.
pub async fn record_attempt<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    endpoint: &str,
    event_sequence: i64,
    attempt: &DeliveryAttempt,
    policy: &DeliveryPolicy,
) -> PgResult<DeliveryRecord> {
    client
        .execute_cached(
            "SELECT 1 FROM event_deliveries WHERE endpoint_id = $1 AND event_sequence = $2 FOR UPDATE",
            &[&endpoint, &event_sequence],
        )
        .await?;
    let current = delivery(client, endpoint, event_sequence).await?;
    if current.status != DeliveryStatus::Pending {
        // Given up or disabled meanwhile, or acknowledged by another sender: keep that.
        return Ok(current);
    }
    let (status, next_attempt_at) = after_attempt(
        attempt,
        current.attempts,
        current.event.created_at,
        context.now,
        policy,
    );
    let now = to_unix_micros(context.now);
    let status_code = attempt.status_code.map(i64::from);
    client
        .execute_cached(
            "UPDATE event_deliveries SET status = $3::TEXT, attempts = attempts + 1, next_attempt_at = $4, \
             leased_until = NULL, last_status_code = $5, last_error = $6, last_attempt_at = $7::BIGINT, \
             delivered_at = CASE WHEN $3::TEXT = 'delivered' THEN $7::BIGINT ELSE NULL END \
             WHERE endpoint_id = $1 AND event_sequence = $2",
            &[
                &endpoint,
                &event_sequence,
                &status.code(),
                &to_unix_micros(next_attempt_at),
                &status_code,
                &attempt.error,
                &now,
            ],
        )
        .await?;
    client
        .execute_cached(
            "INSERT INTO delivery_attempts (endpoint_id, event_sequence, attempt, attempted_at, status_code, \
             error) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &endpoint,
                &event_sequence,
                &(i64::from(current.attempts) + 1),
                &now,
                &status_code,
                &attempt.error,
            ],
        )
        .await?;
    delivery(client, endpoint, event_sequence).await
}

const DELIVERY_COLUMNS: &str = "d.endpoint_id, d.status, d.attempts, d.next_attempt_at, d.last_status_code, \
     d.last_error, d.last_attempt_at, d.delivered_at";

fn delivery_from(row: &Row) -> PgResult<DeliveryRecord> {
    let status: String = row.try_get(1)?;
    let attempts: i64 = row.try_get(2)?;
    Ok(DeliveryRecord {
        endpoint: row.try_get(0)?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Database(format!("stored delivery status `{status}` is not valid")))?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt_at: from_unix_micros(row.try_get(3)?),
        last_status_code: row
            .try_get::<_, Option<i64>>(4)?
            .and_then(|code| u16::try_from(code).ok()),
        last_error: row.try_get(5)?,
        last_attempt_at: row.try_get::<_, Option<i64>>(6)?.map(from_unix_micros),
        delivered_at: row.try_get::<_, Option<i64>>(7)?.map(from_unix_micros),
        event: event_from(row, 8)?,
    })
}

async fn delivery<C: GenericClient + Sync>(
    client: &C,
    endpoint: &str,
    event_sequence: i64,
) -> PgResult<DeliveryRecord> {
    let row = client
        .query_opt_cached(
            &format!(
                "SELECT {DELIVERY_COLUMNS}, {EVENT_COLUMNS} FROM event_deliveries d \
                 JOIN events e ON e.sequence = d.event_sequence WHERE d.endpoint_id = $1 AND d.event_sequence = $2"
            ),
            &[&endpoint, &event_sequence],
        )
        .await?
        .ok_or_else(|| not_found("delivery", format!("{endpoint}/{event_sequence}")))?;
    delivery_from(&row)
}

/// An endpoint's deliveries, newest event first, after the cursor (an event id).
pub async fn list_deliveries<C: GenericClient + Sync>(
    client: &C,
    endpoint: &str,
    page: &PageRequest,
) -> PgResult<Page<DeliveryRecord>> {
    webhook_endpoint(client, endpoint).await?;
    let before = cursor_sequence(client, page).await?;
    let rows = client
        .query_cached(
            &format!(
                "SELECT {DELIVERY_COLUMNS}, {EVENT_COLUMNS} FROM event_deliveries d \
                 JOIN events e ON e.sequence = d.event_sequence \
                 WHERE d.endpoint_id = $1 AND d.event_sequence < $2 ORDER BY d.event_sequence DESC LIMIT $3"
            ),
            &[&endpoint, &before, &(i64::from(page.limit) + 1)],
        )
        .await?;
    let mut data = rows.iter().map(delivery_from).collect::<PgResult<Vec<_>>>()?;
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}
