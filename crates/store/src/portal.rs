//! Billing page sessions: the single-use link an integrating backend asks for
//! (`POST /v1/portal_sessions`) and the browser session it becomes once redeemed.
//!
//! Only SHA-256 hashes of the link token and of the session secret reach the
//! database, so reading it opens no one's billing page. Both backends keep them
//! in the database rather than in process memory: any process sharing it can
//! redeem a link another one issued, and a link is redeemed exactly once even when
//! two processes race for it (one conditional UPDATE decides).

use tollgate_core::{AccountId, Timestamp};

/// Most expired rows removed each time a link is issued: cleaning up stays bounded
/// and needs no background job.
pub const PORTAL_CLEANUP_BATCH: i64 = 100;

/// A link to record, not yet redeemed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPortalSession {
    /// `ps_…`; not a secret.
    pub id: String,
    /// Whose billing page.
    pub account: AccountId,
    /// Hex SHA-256 of the link's token.
    pub link_hash: String,
    /// The link cannot be redeemed from this instant on.
    pub link_expires_at: Timestamp,
    /// Where the page's "Back" link leads.
    pub return_url: Option<String>,
    /// Who asked for it (`api_key:operator`), for the audit trail of page actions.
    pub created_by: String,
}

/// A redeemed link: a live browser session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalSessionRecord {
    /// `ps_…`.
    pub id: String,
    /// Whose billing page.
    pub account: AccountId,
    /// Where the page's "Back" link leads.
    pub return_url: Option<String>,
    /// Who asked for the link.
    pub created_by: String,
    /// The session ends at this instant.
    pub expires_at: Timestamp,
}
