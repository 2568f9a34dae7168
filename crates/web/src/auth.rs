//! API keys: generation, hashing, and the bearer-token check in front of `/v1`.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_core::Actor;

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// Prefix of every secret key, so a leaked one is recognisable in scanners.
pub const SECRET_KEY_PREFIX: &str = "tg_sk_";
/// Random base62 characters after the prefix (~190 bits).
pub const SECRET_KEY_RANDOM_CHARS: usize = 32;
/// Audit id of the operator key from the configuration.
pub const OPERATOR_KEY_ID: &str = "operator";
/// Longest bearer token looked at; anything longer cannot be a key of ours.
const MAX_TOKEN_LENGTH: usize = 256;

/// A SHA-256 digest of a secret key.
pub(crate) type KeyHash = [u8; 32];

/// A new secret key: `tg_sk_` followed by 32 random base62 characters.
pub fn generate_api_key() -> String {
    // ThreadRng is a CSPRNG seeded from the OS.
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(SECRET_KEY_RANDOM_CHARS)
        .map(char::from)
        .collect();
    format!("{SECRET_KEY_PREFIX}{random}")
}

/// The hex SHA-256 of a secret key: the only form in which keys are stored.
pub fn hash_api_key(secret: &str) -> String {
    hex::encode(hash_api_key_bytes(secret))
}

pub(crate) fn hash_api_key_bytes(secret: &str) -> KeyHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Who is calling, put into the request's extensions by [`require_api_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The actor recorded in the audit log.
    pub actor: Actor,
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_TOKEN_LENGTH)
        .then_some(token)
}

/// Middleware: accepts the operator key or any live key in the store,
/// otherwise answers `401 unauthorized`.
pub async fn require_api_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer_token(request.headers()).ok_or_else(ApiError::unauthorized)?;
    let hash = hash_api_key_bytes(token);
    let is_operator = state
        .operator_key_hash()
        .is_some_and(|operator| bool::from(operator.ct_eq(&hash)));
    let actor = if is_operator {
        Actor::ApiKey(OPERATOR_KEY_ID.to_owned())
    } else {
        // Looking up by hash leaks nothing: the hash of a guess says nothing about real keys.
        match state.store().api_key_by_hash(&hex::encode(hash)).await? {
            Some(key) => Actor::ApiKey(key.id),
            None => return Err(ApiError::unauthorized()),
        }
    };
    if let Some(refused) = over_rate_limit(&state, &actor) {
        return Ok(refused);
    }
    request.extensions_mut().insert(Caller { actor });
    Ok(next.run(request).await)
}

/// `429 rate_limited` with `Retry-After` when the key has used up its bucket.
fn over_rate_limit(state: &AppState, actor: &Actor) -> Option<Response> {
    use governor::clock::Clock as _;
    let limiter = state.rate_limiter()?;
    let not_until = limiter.check_key(&actor.to_string()).err()?;
    let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
    // Whole seconds, at least one: Retry-After has no finer unit.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = ApiError::new(
        ErrorCode::RateLimited,
        format!("too many requests for this API key; retry in {seconds} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_base62_and_distinct() {
        let key = generate_api_key();
        assert!(key.starts_with(SECRET_KEY_PREFIX));
        let random = &key[SECRET_KEY_PREFIX.len()..];
        assert_eq!(random.len(), SECRET_KEY_RANDOM_CHARS);
        assert!(random.bytes().all(|byte| byte.is_ascii_alphanumeric()));
        assert_ne!(key, generate_api_key());
    }

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert_eq!(bearer_token(&headers("Bearer tg_sk_x")), Some("tg_sk_x"));
        assert_eq!(bearer_token(&headers("bearer tg_sk_x")), Some("tg_sk_x"));
        assert_eq!(bearer_token(&headers("Basic dXNlcg==")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&headers("tg_sk_x")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
