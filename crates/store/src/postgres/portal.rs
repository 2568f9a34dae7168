//! Billing page links and sessions on PostgreSQL (see `crate::portal`); the twin of
//! `sqlite/portal.rs`. Redeeming is one conditional UPDATE: under READ COMMITTED a
//! second process racing for the same link waits for the first one's row lock, then
//! re-checks the condition against the committed row and matches nothing. No account
//! lock is needed: these rows touch no balance.

use super::prepared::Prepared as _;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::{AccountId, Timestamp};

use super::PgResult;
use super::ops::Context;
use crate::decide::not_found;
use crate::{NewPortalSession, PORTAL_CLEANUP_BATCH, PortalSessionRecord, StoreError};

const RETURNED: &str = "id, account_id, return_url, created_by, session_expires_at";

fn into_record(row: &Row) -> PgResult<PortalSessionRecord> {
    let account: String = row.try_get(1)?;
    Ok(PortalSessionRecord {
        id: row.try_get(0)?,
        account: AccountId::parse(&account)
            .map_err(|_| StoreError::Database(format!("stored account id `{account}` is not valid")))?,
        return_url: row.try_get(2)?,
        created_by: row.try_get(3)?,
        expires_at: from_unix_micros(row.try_get(4)?),
    })
}

pub async fn create_portal_session<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    session: &NewPortalSession,
) -> PgResult<()> {
    let now = to_unix_micros(context.now);
    client
        .execute_cached(
            "DELETE FROM portal_sessions WHERE id IN (SELECT id FROM portal_sessions \
             WHERE (redeemed_at IS NULL AND link_expires_at <= $1) OR session_expires_at <= $1 LIMIT $2)",
            &[&now, &PORTAL_CLEANUP_BATCH],
        )
        .await?;
    if client
        .query_opt_cached(
            "SELECT 1 FROM accounts WHERE id = $1",
            &[&session.account.as_str()],
        )
        .await?
        .is_none()
    {
        return Err(not_found("account", &session.account).into());
    }
    client
        .execute_cached(
            "INSERT INTO portal_sessions (id, account_id, link_hash, link_expires_at, return_url, created_by, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &session.id,
                &session.account.as_str(),
                &session.link_hash,
                &to_unix_micros(session.link_expires_at),
                &session.return_url,
                &session.created_by,
                &now,
            ],
        )
        .await?;
    Ok(())
}

pub async fn redeem_portal_link<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    link_hash: &str,
    session_hash: &str,
    session_expires_at: Timestamp,
) -> PgResult<Option<PortalSessionRecord>> {
    let row = client
        .query_opt_cached(
            &format!(
                "UPDATE portal_sessions SET session_hash = $2, redeemed_at = $3, session_expires_at = $4 \
                 WHERE link_hash = $1 AND redeemed_at IS NULL AND link_expires_at > $3 RETURNING {RETURNED}"
            ),
            &[
                &link_hash,
                &session_hash,
                &to_unix_micros(context.now),
                &to_unix_micros(session_expires_at),
            ],
        )
        .await?;
    row.as_ref().map(into_record).transpose()
}

pub async fn portal_session<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    session_hash: &str,
) -> PgResult<Option<PortalSessionRecord>> {
    let row = client
        .query_opt_cached(
            &format!(
                "SELECT {RETURNED} FROM portal_sessions WHERE session_hash = $1 AND session_expires_at > $2"
            ),
            &[&session_hash, &to_unix_micros(context.now)],
        )
        .await?;
    row.as_ref().map(into_record).transpose()
}
