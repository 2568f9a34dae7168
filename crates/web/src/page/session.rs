//! Portal sessions: the single-use link an integrating backend asks for, the
//! browser session it turns into, and the per-session CSRF token.
//!
//! Only SHA-256 hashes of the link token and of the session secret are stored, so a
//! copy of the database opens no one's billing page. Both live in the store (not in
//! process memory) so that any of several Tollgate processes sharing one PostgreSQL
//! can redeem a link or serve a session another one created.

use axum::extract::FromRequestParts;
use axum::http::header::COOKIE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_core::{AccountId, Actor, Timestamp};
use tollgate_store::{NewPortalSession, PortalSessionRecord, StoreResult};

use crate::page::PageError;
use crate::state::AppState;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "tollgate_portal";
/// How long a portal link can be redeemed (API.md: at most 5 minutes).
pub const LINK_TTL_SECONDS: i64 = 5 * 60;
/// How long a session lasts once the link is redeemed; the backend hands out a new
/// link whenever the customer opens billing again.
pub const SESSION_TTL_SECONDS: i64 = 60 * 60;
/// Prefix of link tokens, so a leaked one is recognisable in logs and scanners.
pub const LINK_TOKEN_PREFIX: &str = "tg_pl_";
/// Random base62 characters of a link token or session secret (~238 bits).
const SECRET_CHARS: usize = 40;
/// Longest token or cookie value looked at; anything longer is not ours.
const MAX_SECRET_LENGTH: usize = 128;
/// Header htmx sends the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A fresh random secret (ThreadRng is a CSPRNG seeded from the OS).
fn random_secret() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(SECRET_CHARS)
        .map(char::from)
        .collect()
}

/// The hex SHA-256 of a secret: the only form in which tokens are stored.
fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new link, recorded in the store; the token itself is returned once and never stored.
pub(crate) struct IssuedLink {
    /// The token that goes into the link's path.
    pub token: String,
    /// Until when it can be redeemed.
    pub expires_at: Timestamp,
    /// The session's id (not a secret).
    pub id: String,
}

/// Records a single-use link to `account`'s page.
pub(crate) async fn issue_link(
    state: &AppState,
    account: AccountId,
    return_url: Option<String>,
    actor: &Actor,
) -> StoreResult<IssuedLink> {
    let token = format!("{LINK_TOKEN_PREFIX}{}", random_secret());
    let now = state.config().clock.now();
    let expires_at = now + time::Duration::seconds(LINK_TTL_SECONDS);
    let id = format!("ps_{}", uuid::Uuid::now_v7().simple());
    state
        .store()
        .create_portal_session(NewPortalSession {
            id: id.clone(),
            account,
            link_hash: digest(&token),
            link_expires_at: expires_at,
            return_url,
            created_by: actor.to_string(),
        })
        .await?;
    Ok(IssuedLink {
        token,
        expires_at,
        id,
    })
}

/// A redeemed link: the session secret to put in the cookie.
pub(crate) struct Redeemed {
    /// The cookie's value.
    pub secret: String,
}

/// Turns a link token into a session, once: a second use, or one after the link
/// expired, gets `None`.
pub(crate) async fn redeem_link(state: &AppState, token: &str) -> StoreResult<Option<Redeemed>> {
    if token.len() > MAX_SECRET_LENGTH || !token.starts_with(LINK_TOKEN_PREFIX) {
        return Ok(None);
    }
    let secret = random_secret();
    let expires_at = state.config().clock.now() + time::Duration::seconds(SESSION_TTL_SECONDS);
    let redeemed = state
        .store()
        .redeem_portal_link(&digest(token), &digest(&secret), expires_at)
        .await?;
    Ok(redeemed.map(|_| Redeemed { secret }))
}

/// The `Set-Cookie` value of a session: HttpOnly (scripts never see it), SameSite=Lax
/// (sent on the top-level return from Stripe's hosted page, never on cross-site posts),
/// Secure whenever Tollgate is served over HTTPS.
pub(crate) fn session_cookie(state: &AppState, secret: &str) -> Option<HeaderValue> {
    let secure = if state.config().public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={secret}; Path=/; Max-Age={SESSION_TTL_SECONDS}; HttpOnly; SameSite=Lax{secure}"
    ))
    .ok()
}

/// The session cookie's value in a request, if any.
fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty() && value.len() <= MAX_SECRET_LENGTH)
}

/// The CSRF token of a session: derived from its secret, so it needs no storage, is
/// the same in every process, and cannot be computed by anyone who lacks the
/// (HttpOnly) cookie.
fn csrf_token_for(secret: &str) -> String {
    digest(&format!("tollgate-portal-csrf\0{secret}"))
}

/// The customer's session, as every page handler receives it.
#[derive(Clone, Debug)]
pub(crate) struct PortalSession {
    /// Whose page.
    pub account: AccountId,
    /// Where "Back" leads, as the backend asked.
    pub return_url: Option<String>,
    /// Who acts in the audit log: the API key that opened the session.
    pub actor: Actor,
    /// The token every form must send back.
    pub csrf_token: String,
}

impl PortalSession {
    /// Whether `sent` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, sent: Option<&str>) -> bool {
        sent.is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(self.csrf_token.as_bytes())))
    }

    /// Refuses a state-changing request without this session's CSRF token (in the
    /// form or, for htmx requests, in the header).
    pub fn check_csrf(&self, headers: &HeaderMap, form_token: Option<&str>) -> Result<(), PageError> {
        let header = headers.get(CSRF_HEADER).and_then(|value| value.to_str().ok());
        if self.csrf_matches(form_token) || self.csrf_matches(header) {
            Ok(())
        } else {
            Err(PageError::forbidden())
        }
    }
}

/// The API key id back from the `created_by` text (`api_key:operator`).
fn actor_of(record: &PortalSessionRecord) -> Actor {
    match record.created_by.strip_prefix("api_key:") {
        Some(id) => Actor::ApiKey(id.to_owned()),
        None => Actor::System,
    }
}

impl FromRequestParts<AppState> for PortalSession {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<PortalSession, PageError> {
        let secret = cookie_secret(&parts.headers).ok_or_else(PageError::expired)?;
        let record = state
            .store()
            .portal_session(&digest(secret))
            .await?
            .ok_or_else(PageError::expired)?;
        Ok(PortalSession {
            actor: actor_of(&record),
            account: record.account,
            return_url: record.return_url,
            csrf_token: csrf_token_for(secret),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; tollgate_portal=s3cret ; b=2"),
        );
        assert_eq!(cookie_secret(&headers), Some("s3cret"));
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("tollgate_portalx=1"));
        assert_eq!(cookie_secret(&headers), None);
        assert_eq!(cookie_secret(&HeaderMap::new()), None);
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let (a, b) = (random_secret(), random_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), SECRET_CHARS);
        assert_eq!(digest("abc").len(), 64);
        assert_ne!(csrf_token_for(&a), csrf_token_for(&b));
        assert_ne!(csrf_token_for(&a), digest(&a));
    }
}
