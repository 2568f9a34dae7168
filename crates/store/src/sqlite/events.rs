//! The outbox on SQLite: events written with their change, endpoints, and deliveries.

use rusqlite::{Connection, OptionalExtension, Row, params};
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::{AccountId, Actor, DeliveryPolicy, Micros, Timestamp};

use super::ops;
use super::rows::account_id;
use super::writer::WriteContext;
use crate::decide::not_found;
use crate::events::{
    MAX_DELIVERY_BATCH, PendingEvent, after_attempt, endpoint_audit, endpoint_receives_sql, parse_kind,
    parse_selection, selection_text,
};
use crate::{
    DeliveryAttempt, DeliveryRecord, DeliveryStatus, DueDelivery, EventFilter, EventRecord,
    NewWebhookEndpoint, Page, PageRequest, StoreError, StoreResult, WebhookEndpointRecord, new_id,
};

const EVENT_COLUMNS: &str = "e.sequence, e.id, e.type, e.account_id, e.reference_id, e.amount_micros, e.balance_micros, e.detail, e.created_at";

fn event_row(row: &Row<'_>, first: usize) -> rusqlite::Result<RawEvent> {
    Ok(RawEvent {
        sequence: row.get(first)?,
        id: row.get(first + 1)?,
        kind: row.get(first + 2)?,
        account: row.get(first + 3)?,
        reference: row.get(first + 4)?,
        amount: row.get(first + 5)?,
        balance: row.get(first + 6)?,
        detail: row.get(first + 7)?,
        created_at: row.get(first + 8)?,
    })
}

struct RawEvent {
    sequence: i64,
    id: String,
    kind: String,
    account: String,
    reference: Option<String>,
    amount: Option<i64>,
    balance: Option<i64>,
    detail: Option<String>,
    created_at: i64,
}

impl RawEvent {
    fn parse(self) -> StoreResult<EventRecord> {
        Ok(EventRecord {
            sequence: self.sequence,
            id: self.id,
            kind: parse_kind(&self.kind)?,
            account: account_id(&self.account)?,
            reference: self.reference,
            amount: self.amount.map(Micros::new),
            balance: self.balance.map(Micros::new),
            detail: self.detail,
            created_at: from_unix_micros(self.created_at),
        })
    }
}

/// Writes `events` and one pending delivery per endpoint that selects each, in the
/// caller's transaction.
pub(super) fn insert_events(context: &WriteContext<'_>, events: &[PendingEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let now = to_unix_micros(context.now);
    let mut insert = context.connection.prepare_cached(
        "INSERT INTO events (id, type, account_id, reference_id, amount_micros, balance_micros, detail, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut fan_out = context.connection.prepare_cached(&format!(
        "INSERT INTO event_deliveries (endpoint_id, event_sequence, account_id, status, next_attempt_at) \
         SELECT w.id, ?1, ?2, 'pending', ?3 FROM webhook_endpoints w \
         WHERE w.disabled_at IS NULL AND {}",
        endpoint_receives_sql("?4")
    ))?;
    for event in events {
        insert.execute(params![
            new_id("evt"),
            event.kind.code(),
            event.account.as_str(),
            event.reference,
            event.amount.map(Micros::get),
            event.balance.map(Micros::get),
            event.detail,
            now,
        ])?;
        let sequence = context.connection.last_insert_rowid();
        fan_out.execute(params![sequence, event.account.as_str(), now, event.kind.code()])?;
    }
    Ok(())
}

/// The outbox position a page starts before: that of the cursor's event, or the end.
fn cursor_sequence(connection: &Connection, page: &PageRequest) -> StoreResult<i64> {
    match &page.starting_after {
        None => Ok(i64::MAX),
        Some(cursor) => connection
            .prepare_cached("SELECT sequence FROM events WHERE id = ?1")?
            .query_row(params![cursor], |row| row.get(0))
            .optional()?
            .ok_or_else(|| StoreError::InvalidCursor(cursor.clone())),
    }
}

/// Events newest first, filtered, after the cursor (an event id).
pub fn list_events(
    connection: &Connection,
    filter: &EventFilter,
    page: &PageRequest,
) -> StoreResult<Page<EventRecord>> {
    let before = cursor_sequence(connection, page)?;
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.sequence < ?1 \
         AND (?2 IS NULL OR e.account_id = ?2) AND (?3 IS NULL OR e.type = ?3) \
         ORDER BY e.sequence DESC LIMIT ?4"
    ))?;
    let raw = statement
        .query_map(
            params![
                before,
                filter.account.as_ref().map(AccountId::as_str),
                filter.kind.map(|kind| kind.code()),
                i64::from(page.limit) + 1
            ],
            |row| event_row(row, 0),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = raw
        .into_iter()
        .map(RawEvent::parse)
        .collect::<StoreResult<Vec<_>>>()?;
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}

/// One event by id.
pub fn event(connection: &Connection, id: &str) -> StoreResult<EventRecord> {
    connection
        .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.id = ?1"))?
        .query_row(params![id], |row| event_row(row, 0))
        .optional()?
        .ok_or_else(|| not_found("event", id))?
        .parse()
}

const ENDPOINT_COLUMNS: &str = "id, url, secret, event_types, created_at, disabled_at";

fn endpoint_row(row: &Row<'_>) -> rusqlite::Result<(String, String, String, String, i64, Option<i64>)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn endpoint_from(
    raw: (String, String, String, String, i64, Option<i64>),
) -> StoreResult<WebhookEndpointRecord> {
    let (id, url, secret, events, created_at, disabled_at) = raw;
    Ok(WebhookEndpointRecord {
        id,
        url,
        secret,
        events: parse_selection(&events)?,
        created_at: from_unix_micros(created_at),
        disabled_at: disabled_at.map(from_unix_micros),
    })
}

/// Registers an endpoint (audited); it receives events recorded from now on.
pub fn create_endpoint(
    context: &WriteContext<'_>,
    endpoint: &NewWebhookEndpoint,
) -> StoreResult<WebhookEndpointRecord> {
    context
        .connection
        .prepare_cached(
            "INSERT INTO webhook_endpoints (id, url, secret, event_types, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            endpoint.id,
            endpoint.url,
            endpoint.secret,
            selection_text(&endpoint.events),
            to_unix_micros(context.now)
        ])?;
    ops::audit_global(
        context,
        &endpoint.actor,
        "webhook_endpoint.created",
        None,
        Some(format!(
            "id={} {}",
            endpoint.id,
            endpoint_audit(&endpoint.url, &endpoint.events)
        )),
    )?;
    webhook_endpoint(context.connection, &endpoint.id)
}

/// Switches an endpoint off (audited): its pending deliveries stop.
pub fn disable_endpoint(
    context: &WriteContext<'_>,
    id: &str,
    actor: &Actor,
) -> StoreResult<WebhookEndpointRecord> {
    let endpoint = webhook_endpoint(context.connection, id)?;
    if endpoint.disabled_at.is_some() {
        return Ok(endpoint);
    }
    let now = to_unix_micros(context.now);
    context
        .connection
        .prepare_cached("UPDATE webhook_endpoints SET disabled_at = ?2 WHERE id = ?1")?
        .execute(params![id, now])?;
    context
        .connection
        .prepare_cached(
            "UPDATE event_deliveries SET status = 'failed', last_error = 'endpoint disabled' \
             WHERE endpoint_id = ?1 AND status = 'pending'",
        )?
        .execute(params![id])?;
    ops::audit_global(
        context,
        actor,
        "webhook_endpoint.disabled",
        Some(format!(
            "id={id} {}",
            endpoint_audit(&endpoint.url, &endpoint.events)
        )),
        Some(format!("id={id} disabled")),
    )?;
    webhook_endpoint(context.connection, id)
}

/// One endpoint by id.
pub fn webhook_endpoint(connection: &Connection, id: &str) -> StoreResult<WebhookEndpointRecord> {
    let raw = connection
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?1"
        ))?
        .query_row(params![id], endpoint_row)
        .optional()?
        .ok_or_else(|| not_found("webhook endpoint", id))?;
    endpoint_from(raw)
}

/// Every endpoint, oldest first (an operator registers a handful).
pub fn list_endpoints(connection: &Connection) -> StoreResult<Vec<WebhookEndpointRecord>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id LIMIT 1000"
    ))?;
    let raw = statement
        .query_map([], endpoint_row)?
        .collect::<Result<Vec<_>, _>>()?;
    raw.into_iter().map(endpoint_from).collect()
}

/// Claims up to `limit` due deliveries until `lease_until`: for each endpoint and account
/// only the oldest pending one, so an account's events arrive in order.
pub fn claim_deliveries(
    context: &WriteContext<'_>,
    lease_until: Timestamp,
    limit: usize,
) -> StoreResult<Vec<DueDelivery>> {
    let now = to_unix_micros(context.now);
    let mut statement = context.connection.prepare_cached(&format!(
        "SELECT d.endpoint_id, w.url, w.secret, d.attempts, {EVENT_COLUMNS} \
         FROM event_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id \
         JOIN events e ON e.sequence = d.event_sequence \
         WHERE d.status = 'pending' AND d.next_attempt_at <= ?1 \
         AND (d.leased_until IS NULL OR d.leased_until <= ?1) \
         AND NOT EXISTS (SELECT 1 FROM event_deliveries earlier WHERE earlier.endpoint_id = d.endpoint_id \
             AND earlier.account_id = d.account_id AND earlier.status = 'pending' \
             AND earlier.event_sequence < d.event_sequence) \
         ORDER BY d.event_sequence LIMIT ?2"
    ))?;
    let raw = statement
        .query_map(params![now, limit.min(MAX_DELIVERY_BATCH) as i64], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                event_row(row, 4)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut lease = context.connection.prepare_cached(
        "UPDATE event_deliveries SET leased_until = ?3 WHERE endpoint_id = ?1 AND event_sequence = ?2",
    )?;
    let mut due = Vec::with_capacity(raw.len());
    for (endpoint, url, secret, attempts, event) in raw {
        let event = event.parse()?;
        lease.execute(params![endpoint, event.sequence, to_unix_micros(lease_until)])?;
        due.push(DueDelivery {
            endpoint,
            url,
            secret,
            event,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        });
    }
    Ok(due)
}

/// Records one attempt of a claimed delivery, and the attempt in the log.
pub fn record_attempt(
    context: &WriteContext<'_>,
    endpoint: &str,
    event_sequence: i64,
    attempt: &DeliveryAttempt,
    policy: &DeliveryPolicy,
) -> StoreResult<DeliveryRecord> {
    let current = delivery(context.connection, endpoint, event_sequence)?;
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
    context
        .connection
        .prepare_cached(
            "UPDATE event_deliveries SET status = ?3, attempts = attempts + 1, next_attempt_at = ?4, \
             leased_until = NULL, last_status_code = ?5, last_error = ?6, last_attempt_at = ?7, \
             delivered_at = CASE WHEN ?3 = 'delivered' THEN ?7 ELSE NULL END \
             WHERE endpoint_id = ?1 AND event_sequence = ?2",
        )?
        .execute(params![
            endpoint,
            event_sequence,
            status.code(),
            to_unix_micros(next_attempt_at),
            status_code,
            attempt.error,
            now
        ])?;
    context
        .connection
        .prepare_cached(
            "INSERT INTO delivery_attempts (endpoint_id, event_sequence, attempt, attempted_at, status_code, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            endpoint,
            event_sequence,
            i64::from(current.attempts) + 1,
            now,
            status_code,
            attempt.error
        ])?;
    delivery(context.connection, endpoint, event_sequence)
}

const DELIVERY_COLUMNS: &str = "d.endpoint_id, d.status, d.attempts, d.next_attempt_at, d.last_status_code, \
     d.last_error, d.last_attempt_at, d.delivered_at";

type RawDelivery = (
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    RawEvent,
);

fn delivery_row(row: &Row<'_>) -> rusqlite::Result<RawDelivery> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        event_row(row, 8)?,
    ))
}

fn delivery_from(raw: RawDelivery) -> StoreResult<DeliveryRecord> {
    let (endpoint, status, attempts, next_attempt_at, code, error, attempted_at, delivered_at, event) = raw;
    Ok(DeliveryRecord {
        endpoint,
        event: event.parse()?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Database(format!("stored delivery status `{status}` is not valid")))?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt_at: from_unix_micros(next_attempt_at),
        last_status_code: code.and_then(|code| u16::try_from(code).ok()),
        last_error: error,
        last_attempt_at: attempted_at.map(from_unix_micros),
        delivered_at: delivered_at.map(from_unix_micros),
    })
}

fn delivery(connection: &Connection, endpoint: &str, event_sequence: i64) -> StoreResult<DeliveryRecord> {
    let raw = connection
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS}, {EVENT_COLUMNS} FROM event_deliveries d \
             JOIN events e ON e.sequence = d.event_sequence WHERE d.endpoint_id = ?1 AND d.event_sequence = ?2"
        ))?
        .query_row(params![endpoint, event_sequence], delivery_row)
        .optional()?
        .ok_or_else(|| not_found("delivery", format!("{endpoint}/{event_sequence}")))?;
    delivery_from(raw)
}

/// An endpoint's deliveries, newest event first, after the cursor (an event id).
pub fn list_deliveries(
    connection: &Connection,
    endpoint: &str,
    page: &PageRequest,
) -> StoreResult<Page<DeliveryRecord>> {
    webhook_endpoint(connection, endpoint)?;
    let before = cursor_sequence(connection, page)?;
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS}, {EVENT_COLUMNS} FROM event_deliveries d \
         JOIN events e ON e.sequence = d.event_sequence \
         WHERE d.endpoint_id = ?1 AND d.event_sequence < ?2 ORDER BY d.event_sequence DESC LIMIT ?3"
    ))?;
    let raw = statement
        .query_map(params![endpoint, before, i64::from(page.limit) + 1], delivery_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = raw
        .into_iter()
        .map(delivery_from)
        .collect::<StoreResult<Vec<_>>>()?;
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}
