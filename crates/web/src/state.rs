//! The state every handler shares.

use std::sync::Arc;

use tollgate_billing::Billing;
use tollgate_store::SharedStore;

use crate::auth::{KeyHash, hash_api_key_bytes};
use crate::config::WebConfig;

/// The store, the configuration and the operator key's hash; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    config: Arc<WebConfig>,
    operator_key_hash: Option<KeyHash>,
    rate_limiter: Option<KeyRateLimiter>,
    billing: Option<Billing>,
}

/// Token buckets per API key id.
pub(crate) type KeyRateLimiter = governor::DefaultKeyedRateLimiter<String>;

fn rate_limiter(per_second: u32) -> Option<KeyRateLimiter> {
    let rate = std::num::NonZeroU32::new(per_second)?;
    let burst = rate.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(1));
    Some(governor::RateLimiter::keyed(
        governor::Quota::per_second(rate).allow_burst(burst),
    ))
}

impl AppState {
    /// Hashes the operator key once and drops the plaintext.
    pub fn new(store: SharedStore, config: WebConfig) -> AppState {
        AppState::build(store, config, None)
    }

    /// An app state whose card payments go through `billing` (Stripe or the sandbox).
    pub fn with_billing(store: SharedStore, config: WebConfig, billing: Billing) -> AppState {
        AppState::build(store, config, Some(billing))
    }

    fn build(store: SharedStore, mut config: WebConfig, billing: Option<Billing>) -> AppState {
        let operator_key_hash = config
            .operator_key
            .take()
            .filter(|key| !key.is_empty())
            .map(|key| hash_api_key_bytes(&key));
        AppState {
            inner: Arc::new(Inner {
                store,
                rate_limiter: rate_limiter(config.rate_limit_per_second),
                config: Arc::new(config),
                operator_key_hash,
                billing,
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    /// The configuration (without the operator key's plaintext).
    pub fn config(&self) -> &Arc<WebConfig> {
        &self.inner.config
    }

    /// The payment flows, when card payments are configured.
    pub fn billing(&self) -> Option<&Billing> {
        self.inner.billing.as_ref()
    }

    pub(crate) fn operator_key_hash(&self) -> Option<&KeyHash> {
        self.inner.operator_key_hash.as_ref()
    }

    pub(crate) fn rate_limiter(&self) -> Option<&KeyRateLimiter> {
        self.inner.rate_limiter.as_ref()
    }
}
