//! What the HTTP layer needs to know beyond the store.

use std::fmt;
use std::sync::Arc;

use tollgate_core::{Clock, HoldTtl, PriceBook, TierBasis};

/// Default hold time-to-live (PRODUCT.md: 15 minutes).
pub const DEFAULT_HOLD_TTL_SECONDS: i64 = 15 * 60;
/// Default largest request body (a 1,000-event batch is ~150 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default time a request may take before the server gives up on it.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default requests per second one API key may make (bursts up to twice that).
pub const DEFAULT_RATE_LIMIT_PER_SECOND: u32 = 10_000;

/// Settings of the HTTP API. The price book, tier basis and clock must be
/// the same ones the store was opened with.
#[derive(Clone)]
pub struct WebConfig {
    /// The price book and tiers (for billing summaries and the tier list).
    pub price_book: Arc<PriceBook>,
    /// Cycle or lifetime tiers.
    pub tier_basis: TierBasis,
    /// The source of "now" (projections of the next tier).
    pub clock: Arc<dyn Clock>,
    /// Time-to-live of a hold placed without `ttl_seconds`.
    pub default_hold_ttl: HoldTtl,
    /// The operator's secret key in plaintext (config or `TOLLGATE_API_KEY`);
    /// only its hash is kept once the app state is built.
    pub operator_key: Option<String>,
    /// Where "Contact Sales" sends customers.
    pub booking_url: String,
    /// Base URL for links Tollgate hands out.
    pub public_url: String,
    /// Largest request body accepted; larger ones get `413`.
    pub max_body_bytes: usize,
    /// Time a request may take before it is answered `503`.
    pub request_timeout_ms: u64,
    /// Requests per second per API key before `429 rate_limited` (bursts of
    /// twice that pass); 0 switches the limit off.
    pub rate_limit_per_second: u32,
}

impl WebConfig {
    /// A configuration with the shipped defaults for everything but the
    /// price book and the clock.
    pub fn new(price_book: Arc<PriceBook>, clock: Arc<dyn Clock>) -> WebConfig {
        WebConfig {
            price_book,
            tier_basis: TierBasis::default(),
            clock,
            default_hold_ttl: HoldTtl::from_seconds(DEFAULT_HOLD_TTL_SECONDS)
                .expect("15 minutes is within the hold TTL bounds"),
            operator_key: None,
            booking_url: String::new(),
            public_url: "http://127.0.0.1:8080".to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            rate_limit_per_second: DEFAULT_RATE_LIMIT_PER_SECOND,
        }
    }
}

// Hand-written so the operator key never reaches a log line.
impl fmt::Debug for WebConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("WebConfig")
            .field("price_book_version", &self.price_book.version())
            .field("tier_basis", &self.tier_basis)
            .field("default_hold_ttl", &self.default_hold_ttl)
            .field("operator_key", &self.operator_key.as_ref().map(|_| "<redacted>"))
            .field("booking_url", &self.booking_url)
            .field("public_url", &self.public_url)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .finish()
    }
}
