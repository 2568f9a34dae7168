//! Billing page links and sessions on SQLite (see `crate::portal`). Writes run on the
//! writer thread like every other write, so issuing, redeeming and cleaning up are
//! serialised with each other and with the ledger.

use rusqlite::{Connection, OptionalExtension, Row, params};
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::{AccountId, Timestamp};

use super::writer::WriteContext;
use crate::decide::not_found;
use crate::{NewPortalSession, PORTAL_CLEANUP_BATCH, PortalSessionRecord, StoreError, StoreResult};

const RETURNED: &str = "id, account_id, return_url, created_by, session_expires_at";

fn record(row: &Row<'_>) -> rusqlite::Result<(String, String, Option<String>, String, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
}

fn into_record(
    (id, account, return_url, created_by, expires_at): (String, String, Option<String>, String, i64),
) -> StoreResult<PortalSessionRecord> {
    Ok(PortalSessionRecord {
        id,
        account: AccountId::parse(&account)
            .map_err(|_| StoreError::Database(format!("stored account id `{account}` is not valid")))?,
        return_url,
        created_by,
        expires_at: from_unix_micros(expires_at),
    })
}

pub fn create_portal_session(context: &WriteContext<'_>, session: &NewPortalSession) -> StoreResult<()> {
    let now = to_unix_micros(context.now);
    context
        .connection
        .prepare_cached(
            "DELETE FROM portal_sessions WHERE id IN (SELECT id FROM portal_sessions \
             WHERE (redeemed_at IS NULL AND link_expires_at <= ?1) OR session_expires_at <= ?1 LIMIT ?2)",
        )?
        .execute(params![now, PORTAL_CLEANUP_BATCH])?;
    let exists: Option<i64> = context
        .connection
        .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?
        .query_row(params![session.account.as_str()], |row| row.get(0))
        .optional()?;
    if exists.is_none() {
        return Err(not_found("account", &session.account));
    }
    context
        .connection
        .prepare_cached(
            "INSERT INTO portal_sessions (id, account_id, link_hash, link_expires_at, return_url, created_by, \
             created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            session.id,
            session.account.as_str(),
            session.link_hash,
            to_unix_micros(session.link_expires_at),
            session.return_url,
            session.created_by,
            now,
        ])?;
    Ok(())
}

pub fn redeem_portal_link(
    context: &WriteContext<'_>,
    link_hash: &str,
    session_hash: &str,
    session_expires_at: Timestamp,
) -> StoreResult<Option<PortalSessionRecord>> {
    // One statement decides: only an unredeemed, unexpired link matches, and only once.
    let row = context
        .connection
        .prepare_cached(&format!(
            "UPDATE portal_sessions SET session_hash = ?2, redeemed_at = ?3, session_expires_at = ?4 \
             WHERE link_hash = ?1 AND redeemed_at IS NULL AND link_expires_at > ?3 RETURNING {RETURNED}"
        ))?
        .query_row(
            params![
                link_hash,
                session_hash,
                to_unix_micros(context.now),
                to_unix_micros(session_expires_at)
            ],
            record,
        )
        .optional()?;
    row.map(into_record).transpose()
}

pub fn portal_session(
    connection: &Connection,
    session_hash: &str,
    now: Timestamp,
) -> StoreResult<Option<PortalSessionRecord>> {
    let row = connection
        .prepare_cached(&format!(
            "SELECT {RETURNED} FROM portal_sessions WHERE session_hash = ?1 AND session_expires_at > ?2"
        ))?
        .query_row(params![session_hash, to_unix_micros(now)], record)
        .optional()?;
    row.map(into_record).transpose()
}
