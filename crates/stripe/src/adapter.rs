//! The Stripe adapter: [`Payments`] on top of async-stripe 1.0 (split crates).
//!
//! Every call has an explicit per-attempt timeout (the client's default is none). Every call is
//! safe to repeat: reads are GETs, and every POST carries an idempotency key — the caller's for
//! anything that creates or moves money, a fresh one per logical call for the rest — so every
//! call is retried, with bounded exponential back-off, on transient failures only.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use stripe::{
    ApiErrors, ApiErrorsType, Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError,
    StripeRequest,
};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    CreateCheckoutSessionPaymentIntentData, CreateCheckoutSessionPaymentIntentDataSetupFutureUsage,
    CreateCheckoutSessionSetupIntentData, ExpireCheckoutSession, ProductData, RetrieveCheckoutSession,
};
use stripe_core::charge::RetrieveCharge;
use stripe_core::customer::{CreateCustomer, UpdateCustomer, UpdateCustomerInvoiceSettings};
use stripe_core::payment_intent::{
    CreatePaymentIntent, CreatePaymentIntentOffSession, ListPaymentIntent, RetrievePaymentIntent,
};
use stripe_core::refund::CreateRefund;
use stripe_payment::payment_method::{DetachPaymentMethod, RetrievePaymentMethod};
use stripe_shared::{CheckoutSessionMode, CheckoutSessionStatus, PaymentIntentStatus, SetupIntentStatus};
use stripe_types::{Currency, RangeQueryTs};
use tollgate_core::{AccountId, Micros};

use crate::port::{
    Card, ChargeRequest, CheckoutPurpose, CheckoutRequest, CheckoutSession, CheckoutSessionId,
    CheckoutStatus, CustomerId, MAX_LISTED_PAYMENTS, Payment, PaymentIntentId, PaymentMethodId,
    PaymentStatus, Payments, PaymentsError, Refund, RefundId, RefundStatus,
};

/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Longest per-attempt timeout accepted; a longer one would hold a request handler hostage.
pub const MAX_TIMEOUT_MS: u64 = 120_000;
/// Default number of retries after the first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Most retries accepted; keeps a call's worst-case duration bounded.
pub const MAX_RETRIES: u32 = 10;
/// Default delay before the first retry; it doubles for each further one.
pub const DEFAULT_RETRY_BASE_DELAY_MS: u64 = 250;
/// Longest wait between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Metadata key holding the Tollgate account a customer belongs to.
pub const ACCOUNT_METADATA_KEY: &str = "tollgate_account_id";
/// Metadata key holding a hosted page's [`CheckoutRequest::reference`].
pub const REFERENCE_METADATA_KEY: &str = "tollgate_reference";
/// What `retrieve_checkout` expands so the card and payment come in one round trip.
const SESSION_EXPANSIONS: [&str; 2] = ["setup_intent.payment_method", "payment_intent.payment_method"];
/// Stripe's largest list page.
const LIST_PAGE_SIZE: usize = 100;
/// async-stripe's message when a non-2xx body is not Stripe's JSON error (a proxy's HTML 502…):
/// the status is lost, so this text is the only way to tell it from an unparseable success.
const UNPARSEABLE_ERROR_BODY: &str = "error deserializing Stripe error";

/// How to reach Stripe (or the sandbox).
#[derive(Clone)]
pub struct StripeConfig {
    /// `sk_live_…` / `sk_test_…` (the sandbox takes any `sk_test_…`). Never logged.
    pub secret_key: String,
    /// API base, e.g. the sandbox's `http://127.0.0.1:12111`; `None` is Stripe's.
    pub api_base: Option<String>,
    /// Per-attempt timeout, 1 ms to [`MAX_TIMEOUT_MS`] (default [`DEFAULT_TIMEOUT_MS`]).
    pub timeout_ms: u64,
    /// Retries after the first attempt on transient failures, at most [`MAX_RETRIES`].
    pub max_retries: u32,
    /// Delay before the first retry, doubled for each further one (capped at 5 s, jittered).
    pub retry_base_delay_ms: u64,
}

impl StripeConfig {
    /// Defaults for everything but the key: Stripe's API, 10 s timeout, 2 retries.
    pub fn new(secret_key: impl Into<String>) -> Self {
        StripeConfig {
            secret_key: secret_key.into(),
            api_base: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_base_delay_ms: DEFAULT_RETRY_BASE_DELAY_MS,
        }
    }
}

impl fmt::Debug for StripeConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("StripeConfig")
            .field("secret_key", &"[redacted]")
            .field("api_base", &self.api_base)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_retries", &self.max_retries)
            .field("retry_base_delay_ms", &self.retry_base_delay_ms)
            .finish()
    }
}

/// [`Payments`] backed by Stripe's API through async-stripe.
#[derive(Clone)]
pub struct StripePayments {
    client: Client,
    api_base: String,
    timeout: Duration,
    max_retries: u32,
    retry_base_delay: Duration,
}

impl fmt::Debug for StripePayments {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client holds the key; leave it out entirely.
        formatter
            .debug_struct("StripePayments")
            .field("api_base", &self.api_base)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_base_delay", &self.retry_base_delay)
            .finish_non_exhaustive()
    }
}

/// Makes `ring` the process's TLS crypto provider unless one is installed already.
///
/// rustls refuses to choose when a build links two providers (another dependency may
/// bring aws-lc-rs), and would then panic on the first TLS connection.
pub fn install_crypto_provider() {
    // An error only means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl StripePayments {
    /// Checks the settings and builds the client; no request is sent.
    pub fn new(config: StripeConfig) -> Result<Self, PaymentsError> {
        install_crypto_provider();
        let key = config.secret_key.trim();
        if key.is_empty() {
            return Err(PaymentsError::Configuration(
                "the Stripe secret key is empty".into(),
            ));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&config.timeout_ms) {
            return Err(PaymentsError::Configuration(format!(
                "the Stripe timeout must be 1 to {MAX_TIMEOUT_MS} ms, not {}",
                config.timeout_ms
            )));
        }
        if config.max_retries > MAX_RETRIES {
            return Err(PaymentsError::Configuration(format!(
                "at most {MAX_RETRIES} Stripe retries, not {}",
                config.max_retries
            )));
        }
        if config.retry_base_delay_ms > MAX_RETRY_DELAY.as_millis() as u64 {
            return Err(PaymentsError::Configuration(format!(
                "the Stripe retry delay must be at most {} ms",
                MAX_RETRY_DELAY.as_millis()
            )));
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut builder = ClientBuilder::new(key).timeout(timeout).app_info(
            "tollgate",
            Some(env!("CARGO_PKG_VERSION").to_string()),
            None,
        );
        let api_base = match config.api_base.as_deref().map(str::trim) {
            Some(base) if !base.is_empty() => {
                if !(base.starts_with("http://") || base.starts_with("https://")) {
                    return Err(PaymentsError::Configuration(format!(
                        "the Stripe API base must be an http(s) URL, not {base:?}"
                    )));
                }
                // async-stripe appends `v1/…` to the base as written: without a trailing slash
                // a base with a path (`http://host/stripe`) would become `…/stripev1/…`.
                let base = format!("{}/", base.trim_end_matches('/'));
                builder = builder.url(base.clone());
                base
            }
            _ => "https://api.stripe.com/".to_string(),
        };
        // async-stripe's messages name the offending setting, never the key's value.
        let client = builder
            .build()
            .map_err(|e| PaymentsError::Configuration(e.to_string()))?;
        Ok(StripePayments {
            client,
            api_base,
            timeout,
            max_retries: config.max_retries,
            retry_base_delay: Duration::from_millis(config.retry_base_delay_ms),
        })
    }

    /// The API base requests go to (with a trailing slash).
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    /// Sends one request, retrying transient failures with back-off; every request is
    /// idempotent (a GET, or a POST with a key), which is what makes retrying it safe.
    async fn send<R>(&self, op: &'static str, request: &R, safety: Safety) -> Result<R::Output, Failure>
    where
        R: StripeRequest + Sync,
        R::Output: miniserde::Deserialize + Send,
    {
        let mut attempt: u32 = 0;
        loop {
            let strategy = match &safety {
                Safety::Read => RequestStrategy::Once,
                Safety::Idempotent(key) => RequestStrategy::Idempotent(key.clone()),
            };
            let result = request
                .customize()
                .timeout(self.timeout)
                .request_strategy(strategy)
                .send(&self.client)
                .await;
            let failure = match result {
                Ok(output) => return Ok(output),
                Err(error) => Failure::from_stripe(error, self.timeout),
            };
            match failure {
                Failure::Transient(reason) if attempt < self.max_retries => {
                    let delay = self.backoff(attempt);
                    attempt += 1;
                    tracing::warn!(op, attempt, ?delay, %reason, "Stripe call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Failure::Transient(reason) => {
                    let attempts = attempt + 1;
                    tracing::warn!(op, attempts, %reason, "Stripe call failed; giving up");
                    return Err(Failure::Transient(format!("{reason} ({attempts} attempts)")));
                }
                other => return Err(other),
            }
        }
    }

    /// Exponential back-off with jitter, so that many callers failing together don't retry in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .retry_base_delay
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(MAX_RETRY_DELAY);
        let half = full / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }

    async fn retrieve_payment_method(
        &self,
        id: &PaymentMethodId,
    ) -> Result<stripe_shared::PaymentMethod, PaymentsError> {
        let id = path_id(id.as_str(), "payment_method")?;
        self.send(
            "retrieve_payment_method",
            &RetrievePaymentMethod::new(id),
            Safety::Read,
        )
        .await
        .map_err(Failure::into_error)
    }
}

/// Why a request may be repeated.
enum Safety {
    /// A GET: no effect to repeat.
    Read,
    /// A POST with this idempotency key: Stripe replays the first outcome.
    Idempotent(IdempotencyKey),
}

/// One request's failure, before it is turned into a [`PaymentsError`].
enum Failure {
    /// Stripe answered with an error it may not want repeated.
    Api { status: u16, error: Box<ApiErrors> },
    /// Worth retrying with the same key.
    Transient(String),
    /// An answer that could not be understood.
    Unexpected(String),
    /// The client could not be used as configured.
    Configuration(String),
}

impl Failure {
    fn from_stripe(error: StripeError, timeout: Duration) -> Failure {
        match error {
            StripeError::Stripe(error, status) if retryable_status(status) => Failure::Transient(format!(
                "HTTP {status} {}: {}",
                error.type_.as_str(),
                error.message.as_deref().unwrap_or("no message")
            )),
            StripeError::Stripe(error, status) => Failure::Api { status, error },
            StripeError::Timeout => {
                Failure::Transient(format!("no answer within {} ms", timeout.as_millis()))
            }
            StripeError::ClientError(message) => Failure::Transient(message),
            StripeError::JSONDeserialize(message) if message == UNPARSEABLE_ERROR_BODY => {
                Failure::Transient("an error response that is not Stripe's (a proxy or gateway?)".into())
            }
            StripeError::JSONDeserialize(message) => Failure::Unexpected(message),
            StripeError::ConfigError(message) => Failure::Configuration(message),
        }
    }

    fn into_error(self) -> PaymentsError {
        match self {
            Failure::Api { status, error } => api_error(status, &error),
            Failure::Transient(message) => PaymentsError::Transient(message),
            Failure::Unexpected(message) => PaymentsError::Unexpected(message),
            Failure::Configuration(message) => PaymentsError::Configuration(message),
        }
    }
}

/// Stripe's documented transient statuses: conflicts (a concurrent request with the same key),
/// rate limits and server errors.
fn retryable_status(status: u16) -> bool {
    matches!(status, 409 | 424 | 429 | 500..=599)
}

fn api_error(status: u16, error: &ApiErrors) -> PaymentsError {
    let code = error.code.as_ref().map(|c| c.as_str().to_string());
    let message = error
        .message
        .clone()
        .unwrap_or_else(|| format!("Stripe answered HTTP {status}"));
    if matches!(status, 401 | 403) {
        return PaymentsError::Configuration(message);
    }
    if status == 404 || code.as_deref() == Some("resource_missing") {
        return PaymentsError::NotFound(message);
    }
    let code = code.or_else(|| match error.type_ {
        ApiErrorsType::IdempotencyError => Some("idempotency_error".to_string()),
        _ => None,
    });
    PaymentsError::Rejected {
        code,
        message,
        param: error.param.clone(),
    }
}

fn rejected(code: &str, param: &str, message: impl Into<String>) -> PaymentsError {
    PaymentsError::Rejected {
        code: Some(code.to_string()),
        message: message.into(),
        param: Some(param.to_string()),
    }
}

/// An id that goes into a URL path: async-stripe formats it in unescaped, so anything but
/// Stripe's id alphabet could change the request's path.
fn path_id<'a>(id: &'a str, param: &str) -> Result<&'a str, PaymentsError> {
    let valid = !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(id)
    } else {
        Err(rejected(
            "invalid_id",
            param,
            format!("{id:?} is not a valid {param} id"),
        ))
    }
}

fn idempotency_key(key: &str) -> Result<IdempotencyKey, PaymentsError> {
    IdempotencyKey::new(key)
        .map_err(|e| rejected("invalid_idempotency_key", "idempotency_key", e.to_string()))
}

/// A key for a call the caller gave none for: fixed for this call's retries, new for the next
/// call (a fixed key per object would replay a stale answer if the same change is made twice).
fn fresh_key(op: &'static str) -> IdempotencyKey {
    let key = format!("tollgate-{op}-{}", uuid::Uuid::now_v7());
    // Non-empty and about 50 characters: always within Stripe's 1–255 limit.
    IdempotencyKey::new(key).expect("a generated idempotency key is 1 to 255 characters")
}

/// Whole cents of a positive amount; Stripe cannot charge fractions of a cent.
fn positive_cents(amount: Micros, param: &str) -> Result<i64, PaymentsError> {
    match amount.to_cents() {
        Some(cents) if cents > 0 => Ok(cents),
        Some(_) => Err(rejected(
            "amount_too_small",
            param,
            format!("{param} must be positive, not {amount}"),
        )),
        None => Err(rejected(
            "amount_not_whole_cents",
            param,
            format!("{param} must be a whole number of cents, not {amount}"),
        )),
    }
}

fn micros(cents: i64) -> Result<Micros, PaymentsError> {
    Micros::from_cents(cents)
        .ok_or_else(|| PaymentsError::Unexpected(format!("amount {cents} cents is out of range")))
}

fn metadata(map: BTreeMap<String, String>) -> HashMap<String, String> {
    map.into_iter().collect()
}

fn sorted(map: Option<&HashMap<String, String>>) -> BTreeMap<String, String> {
    map.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn card_of(pm: &stripe_shared::PaymentMethod) -> Result<Card, PaymentsError> {
    let Some(card) = pm.card.as_ref() else {
        return Err(rejected(
            "not_a_card",
            "payment_method",
            format!("{} is not a card", pm.id),
        ));
    };
    let exp_month = u8::try_from(card.exp_month)
        .ok()
        .filter(|m| (1..=12).contains(m))
        .ok_or_else(|| PaymentsError::Unexpected(format!("card expiry month {}", card.exp_month)))?;
    let exp_year = u16::try_from(card.exp_year)
        .map_err(|_| PaymentsError::Unexpected(format!("card expiry year {}", card.exp_year)))?;
    Ok(Card {
        id: PaymentMethodId::new(pm.id.as_str()),
        brand: card.brand.clone(),
        last4: card.last4.clone(),
        exp_month,
        exp_year,
    })
}

fn failed_status(error: &ApiErrors) -> PaymentStatus {
    PaymentStatus::Failed {
        code: error
            .code
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_else(|| error.type_.as_str().to_string()),
        decline_code: error.decline_code.clone(),
        message: error
            .message
            .clone()
            .unwrap_or_else(|| "The payment was declined.".to_string()),
    }
}

fn payment_status(pi: &stripe_shared::PaymentIntent) -> Result<PaymentStatus, PaymentsError> {
    Ok(match &pi.status {
        PaymentIntentStatus::Succeeded => PaymentStatus::Succeeded,
        // Automatic capture: an authorised, not yet captured payment is still in flight.
        PaymentIntentStatus::Processing | PaymentIntentStatus::RequiresCapture => PaymentStatus::Processing,
        PaymentIntentStatus::RequiresAction => PaymentStatus::RequiresAction {
            url: pi
                .next_action
                .as_ref()
                .and_then(|a| a.redirect_to_url.as_ref())
                .and_then(|r| r.url.clone()),
        },
        PaymentIntentStatus::RequiresPaymentMethod => match pi.last_payment_error.as_deref() {
            Some(error) => failed_status(error),
            None => PaymentStatus::Pending,
        },
        PaymentIntentStatus::RequiresConfirmation => PaymentStatus::Pending,
        PaymentIntentStatus::Canceled => PaymentStatus::Canceled,
        // `Unknown(_)` and any variant a later async-stripe adds.
        other => {
            return Err(PaymentsError::Unexpected(format!(
                "payment status {:?}",
                other.as_str()
            )));
        }
    })
}

fn payment_of(pi: &stripe_shared::PaymentIntent) -> Result<Payment, PaymentsError> {
    Ok(Payment {
        intent: PaymentIntentId::new(pi.id.as_str()),
        status: payment_status(pi)?,
        amount: micros(pi.amount)?,
        customer: pi.customer.as_ref().map(|c| CustomerId::new(c.id().as_str())),
        payment_method: pi
            .payment_method
            .as_ref()
            .map(|m| PaymentMethodId::new(m.id().as_str())),
        charge: pi.latest_charge.as_ref().map(|c| c.id().to_string()),
        metadata: sorted(Some(&pi.metadata)),
    })
}

fn session_of(session: &stripe_shared::CheckoutSession) -> Result<CheckoutSession, PaymentsError> {
    let status = match &session.status {
        Some(CheckoutSessionStatus::Open) => CheckoutStatus::Open,
        Some(CheckoutSessionStatus::Complete) => CheckoutStatus::Complete,
        Some(CheckoutSessionStatus::Expired) => CheckoutStatus::Expired,
        other => {
            return Err(PaymentsError::Unexpected(format!(
                "checkout session status {other:?}"
            )));
        }
    };
    let setup_intent = session.setup_intent.as_ref().and_then(|s| s.as_object());
    let payment_intent = session.payment_intent.as_ref().and_then(|p| p.as_object());
    // The card counts once its setup or payment succeeded: a declined attempt also records a
    // payment method on the intent, and that card must not be shown as saved.
    let succeeded_method = match (setup_intent, payment_intent) {
        (Some(si), _) if si.status == SetupIntentStatus::Succeeded => si.payment_method.as_ref(),
        (_, Some(pi)) if pi.status == PaymentIntentStatus::Succeeded => pi.payment_method.as_ref(),
        _ => None,
    };
    let card = succeeded_method
        .and_then(|m| m.as_object())
        .map(card_of)
        .transpose()?;
    Ok(CheckoutSession {
        id: CheckoutSessionId::new(session.id.as_str()),
        url: session.url.clone(),
        status,
        reference: session.client_reference_id.clone(),
        customer: session
            .customer
            .as_ref()
            .map(|c| CustomerId::new(c.id().as_str())),
        card,
        payment: payment_intent.map(payment_of).transpose()?,
        metadata: sorted(session.metadata.as_ref()),
    })
}

fn refund_of(refund: &stripe_shared::Refund) -> Result<Refund, PaymentsError> {
    let status = match refund.status.as_deref() {
        Some("succeeded") => RefundStatus::Succeeded,
        Some("failed") => RefundStatus::Failed {
            reason: refund.failure_reason.clone(),
        },
        Some("canceled") => RefundStatus::Canceled,
        // `pending`, `requires_action`, or not said: not settled yet.
        _ => RefundStatus::Pending,
    };
    Ok(Refund {
        id: RefundId::new(refund.id.as_str()),
        intent: refund
            .payment_intent
            .as_ref()
            .map(|p| PaymentIntentId::new(p.id().as_str())),
        charge: refund.charge.as_ref().map(|c| c.id().to_string()),
        amount: micros(refund.amount)?,
        status,
    })
}

#[async_trait]
impl Payments for StripePayments {
    async fn create_customer(
        &self,
        account: &AccountId,
        name: &str,
        email: &str,
        idempotency_key: &str,
    ) -> Result<CustomerId, PaymentsError> {
        let key = self::idempotency_key(idempotency_key)?;
        let mut request = CreateCustomer::new().metadata(HashMap::from([(
            ACCOUNT_METADATA_KEY.to_string(),
            account.as_str().to_string(),
        )]));
        if !name.is_empty() {
            request = request.name(name);
        }
        if !email.is_empty() {
            request = request.email(email);
        }
        let customer = self
            .send("create_customer", &request, Safety::Idempotent(key))
            .await
            .map_err(Failure::into_error)?;
        Ok(CustomerId::new(customer.id.as_str()))
    }

    async fn create_checkout(&self, request: CheckoutRequest) -> Result<CheckoutSession, PaymentsError> {
        let key = idempotency_key(&request.idempotency_key)?;
        path_id(request.customer.as_str(), "customer")?;
        let mut metadata = request.metadata;
        metadata.insert(REFERENCE_METADATA_KEY.to_string(), request.reference.clone());
        let metadata = self::metadata(metadata);
        let create = CreateCheckoutSession::new()
            .customer(request.customer.as_str())
            .currency(Currency::USD)
            .success_url(request.success_url)
            .cancel_url(request.cancel_url)
            .client_reference_id(request.reference)
            .metadata(metadata.clone());
        let create = match request.purpose {
            CheckoutPurpose::SaveCard => {
                let mut setup = CreateCheckoutSessionSetupIntentData::new();
                setup.metadata = Some(metadata);
                create.mode(CheckoutSessionMode::Setup).setup_intent_data(setup)
            }
            CheckoutPurpose::PayAndSaveCard { amount, description } => {
                let cents = positive_cents(amount, "amount")?;
                let mut price = CreateCheckoutSessionLineItemsPriceData::new(Currency::USD);
                price.product_data = Some(ProductData::new(description.clone()));
                price.unit_amount = Some(cents);
                let mut item = CreateCheckoutSessionLineItems::new();
                item.price_data = Some(price);
                item.quantity = Some(1);
                let mut payment = CreateCheckoutSessionPaymentIntentData::new();
                // Saved for the off-session charges of auto top-up.
                payment.setup_future_usage =
                    Some(CreateCheckoutSessionPaymentIntentDataSetupFutureUsage::OffSession);
                payment.metadata = Some(metadata);
                payment.description = Some(description);
                create
                    .mode(CheckoutSessionMode::Payment)
                    .line_items(vec![item])
                    .payment_intent_data(payment)
            }
        };
        let session = self
            .send("create_checkout", &create, Safety::Idempotent(key))
            .await
            .map_err(Failure::into_error)?;
        session_of(&session)
    }

    async fn retrieve_checkout(&self, id: &CheckoutSessionId) -> Result<CheckoutSession, PaymentsError> {
        let id = path_id(id.as_str(), "checkout_session")?;
        let request = RetrieveCheckoutSession::new(id).expand(SESSION_EXPANSIONS.map(String::from).to_vec());
        let session = self
            .send("retrieve_checkout", &request, Safety::Read)
            .await
            .map_err(Failure::into_error)?;
        session_of(&session)
    }

    async fn expire_checkout(&self, id: &CheckoutSessionId) -> Result<CheckoutSession, PaymentsError> {
        path_id(id.as_str(), "checkout_session")?;
        let request =
            ExpireCheckoutSession::new(id.as_str()).expand(SESSION_EXPANSIONS.map(String::from).to_vec());
        match self
            .send(
                "expire_checkout",
                &request,
                Safety::Idempotent(fresh_key("expire_checkout")),
            )
            .await
        {
            Ok(session) => session_of(&session),
            // Stripe refuses to expire a session that is no longer open; what the caller needs
            // then is how it ended (a `Complete` one was paid), so look.
            Err(Failure::Api { status: 400, error }) => {
                let session = self.retrieve_checkout(id).await?;
                if session.status == CheckoutStatus::Open {
                    Err(api_error(400, &error))
                } else {
                    Ok(session)
                }
            }
            Err(other) => Err(other.into_error()),
        }
    }

    async fn card(&self, id: &PaymentMethodId) -> Result<Card, PaymentsError> {
        card_of(&self.retrieve_payment_method(id).await?)
    }

    async fn set_default_card(
        &self,
        customer: &CustomerId,
        card: &PaymentMethodId,
    ) -> Result<(), PaymentsError> {
        let customer = path_id(customer.as_str(), "customer")?;
        let mut settings = UpdateCustomerInvoiceSettings::new();
        settings.default_payment_method = Some(card.as_str().to_string());
        let request = UpdateCustomer::new(customer).invoice_settings(settings);
        self.send(
            "set_default_card",
            &request,
            Safety::Idempotent(fresh_key("set_default_card")),
        )
        .await
        .map_err(Failure::into_error)?;
        Ok(())
    }

    async fn detach_card(&self, card: &PaymentMethodId) -> Result<(), PaymentsError> {
        let id = path_id(card.as_str(), "payment_method")?;
        let request = DetachPaymentMethod::new(id);
        match self
            .send(
                "detach_card",
                &request,
                Safety::Idempotent(fresh_key("detach_card")),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Stripe refuses to detach a card that is not attached: after a crash between the
            // detach and recording it, the repeat must succeed, so look before failing.
            Err(Failure::Api { status: 400, error }) => {
                let pm = self.retrieve_payment_method(card).await?;
                if pm.customer.is_none() {
                    Ok(())
                } else {
                    Err(api_error(400, &error))
                }
            }
            Err(other) => Err(other.into_error()),
        }
    }

    async fn charge_off_session(&self, request: ChargeRequest) -> Result<Payment, PaymentsError> {
        let key = idempotency_key(&request.idempotency_key)?;
        let cents = positive_cents(request.amount, "amount")?;
        path_id(request.customer.as_str(), "customer")?;
        path_id(request.payment_method.as_str(), "payment_method")?;
        let mut create = CreatePaymentIntent::new(cents, Currency::USD)
            .customer(request.customer.as_str())
            .payment_method(request.payment_method.as_str())
            .confirm(true)
            .off_session(CreatePaymentIntentOffSession::Bool(true))
            .metadata(metadata(request.metadata));
        if !request.description.is_empty() {
            create = create.description(request.description);
        }
        match self
            .send("charge_off_session", &create, Safety::Idempotent(key))
            .await
        {
            Ok(pi) => payment_of(&pi),
            // Off-session declines (and `authentication_required`) are 402 card errors that
            // carry the failed intent: report them as the payment they are.
            Err(Failure::Api { status, error }) if error.type_ == ApiErrorsType::CardError => {
                let Some(pi) = error.payment_intent.as_ref() else {
                    // Refused before any payment existed (an unusable card): nothing to record.
                    return Err(api_error(status, &error));
                };
                let mut payment = payment_of(pi)?;
                payment.status = failed_status(&error);
                if payment.charge.is_none() {
                    payment.charge = error.charge.clone();
                }
                Ok(payment)
            }
            Err(other) => Err(other.into_error()),
        }
    }

    async fn payment(&self, id: &PaymentIntentId) -> Result<Payment, PaymentsError> {
        let id = path_id(id.as_str(), "payment_intent")?;
        let pi = self
            .send("retrieve_payment", &RetrievePaymentIntent::new(id), Safety::Read)
            .await
            .map_err(Failure::into_error)?;
        payment_of(&pi)
    }

    async fn customer_payments(
        &self,
        customer: &CustomerId,
        created_since: i64,
    ) -> Result<Vec<Payment>, PaymentsError> {
        path_id(customer.as_str(), "customer")?;
        let mut payments = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = ListPaymentIntent::new()
                .customer(customer.as_str())
                .created(RangeQueryTs::gte(created_since))
                .limit(LIST_PAGE_SIZE as i64);
            if let Some(last) = after.take() {
                request = request.starting_after(last);
            }
            let page = self
                .send("list_payments", &request, Safety::Read)
                .await
                .map_err(Failure::into_error)?;
            for pi in &page.data {
                payments.push(payment_of(pi)?);
            }
            if !page.has_more {
                return Ok(payments);
            }
            if payments.len() >= MAX_LISTED_PAYMENTS {
                return Err(PaymentsError::Unexpected(format!(
                    "customer {customer} has more than {MAX_LISTED_PAYMENTS} payments since {created_since}"
                )));
            }
            // Stripe pages newest first; the next page starts after the oldest seen.
            match page.data.last() {
                Some(last) => after = Some(last.id.as_str().to_owned()),
                None => {
                    return Err(PaymentsError::Unexpected(
                        "an empty page of payments that says there are more".to_owned(),
                    ));
                }
            }
        }
    }

    async fn charge_payment(&self, charge: &str) -> Result<Option<PaymentIntentId>, PaymentsError> {
        let id = path_id(charge, "charge")?;
        let charge = self
            .send("retrieve_charge", &RetrieveCharge::new(id), Safety::Read)
            .await
            .map_err(Failure::into_error)?;
        Ok(charge
            .payment_intent
            .as_ref()
            .map(|pi| PaymentIntentId::new(pi.id().as_str())))
    }

    async fn refund(
        &self,
        intent: &PaymentIntentId,
        amount: Option<Micros>,
        idempotency_key: &str,
    ) -> Result<Refund, PaymentsError> {
        let key = self::idempotency_key(idempotency_key)?;
        path_id(intent.as_str(), "payment_intent")?;
        let mut create = CreateRefund::new().payment_intent(intent.as_str());
        if let Some(amount) = amount {
            create = create.amount(positive_cents(amount, "amount")?);
        }
        let refund = self
            .send("refund", &create, Safety::Idempotent(key))
            .await
            .map_err(Failure::into_error)?;
        refund_of(&refund)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StripeConfig {
        StripeConfig::new("sk_test_secret_value")
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let config = config();
        assert!(!format!("{config:?}").contains("secret_value"));
        let payments = StripePayments::new(config).expect("valid config");
        assert!(!format!("{payments:?}").contains("secret_value"));
    }

    #[test]
    fn settings_are_checked() {
        let bad = [
            StripeConfig::new("  "),
            StripeConfig {
                timeout_ms: 0,
                ..config()
            },
            StripeConfig {
                timeout_ms: MAX_TIMEOUT_MS + 1,
                ..config()
            },
            StripeConfig {
                max_retries: MAX_RETRIES + 1,
                ..config()
            },
            StripeConfig {
                api_base: Some("ftp://example".into()),
                ..config()
            },
            StripeConfig::new("sk_test_\u{7}bell"),
        ];
        for config in bad {
            let shown = format!("{config:?}");
            assert!(
                matches!(StripePayments::new(config), Err(PaymentsError::Configuration(_))),
                "{shown}"
            );
        }
    }

    #[test]
    fn api_base_gets_a_trailing_slash() {
        let payments = StripePayments::new(StripeConfig {
            api_base: Some("http://127.0.0.1:12111".into()),
            ..config()
        })
        .expect("valid config");
        assert_eq!(payments.api_base(), "http://127.0.0.1:12111/");
        let payments = StripePayments::new(config()).expect("valid config");
        assert_eq!(payments.api_base(), "https://api.stripe.com/");
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let payments = StripePayments::new(StripeConfig {
            retry_base_delay_ms: 100,
            ..config()
        })
        .expect("valid config");
        for attempt in 0..40 {
            let delay = payments.backoff(attempt);
            let full = Duration::from_millis(100)
                .saturating_mul(2u32.saturating_pow(attempt))
                .min(MAX_RETRY_DELAY);
            assert!(delay >= full / 2 && delay <= full, "attempt {attempt}: {delay:?}");
        }
    }

    #[test]
    fn amounts_must_be_positive_whole_cents() {
        assert_eq!(positive_cents(Micros::new(10_000_000), "amount"), Ok(1_000));
        for micros in [0, -10_000, 10_001] {
            assert!(matches!(
                positive_cents(Micros::new(micros), "amount"),
                Err(PaymentsError::Rejected { .. })
            ));
        }
    }

    #[test]
    fn path_ids_cannot_change_the_path() {
        assert!(path_id("pm_1AbC_xyz", "payment_method").is_ok());
        for bad in ["", "pm_1/../customers", "pi_1?expand[]=x", "cus 1", "cs_%2F"] {
            assert!(path_id(bad, "payment_method").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fresh_keys_differ_per_call() {
        assert_ne!(fresh_key("detach_card"), fresh_key("detach_card"));
    }

    /// The list and charge lookups against the sandbox: async-stripe parses its list shape,
    /// every page is read, and `created` and `customer` filter.
    #[tokio::test]
    async fn customer_payments_are_read_across_pages_and_charges_name_their_payment() {
        let sandbox = tollgate_stripe_sandbox::Sandbox::start(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            tollgate_stripe_sandbox::SandboxConfig::new("whsec_adapter_unit"),
        )
        .await
        .expect("sandbox starts");
        let payments = StripePayments::new(StripeConfig {
            api_base: Some(sandbox.base_url()),
            retry_base_delay_ms: 10,
            ..config()
        })
        .expect("valid config");
        let account = AccountId::parse("acme").expect("id");
        let customer = payments
            .create_customer(&account, "Acme", "billing@acme.test", "customer-acme")
            .await
            .expect("customer");
        let other = payments
            .create_customer(&account, "Other", "billing@other.test", "customer-other")
            .await
            .expect("customer");
        let charge = |customer: &CustomerId, index: usize| ChargeRequest {
            customer: customer.clone(),
            payment_method: PaymentMethodId::new("pm_card_visa"),
            amount: Micros::new(10_000_000),
            idempotency_key: format!("charge-{customer}-{index}"),
            description: String::new(),
            metadata: BTreeMap::from([(REFERENCE_METADATA_KEY.to_owned(), format!("top_{index}"))]),
        };
        let count = LIST_PAGE_SIZE + 2;
        let mut first = None;
        for index in 0..count {
            let made = payments
                .charge_off_session(charge(&customer, index))
                .await
                .expect("charged");
            first.get_or_insert(made);
        }
        payments
            .charge_off_session(charge(&other, 0))
            .await
            .expect("charged");
        let since = time_now() - 3_600;
        let listed = payments
            .customer_payments(&customer, since)
            .await
            .expect("listed");
        assert_eq!(listed.len(), count);
        assert!(
            listed
                .iter()
                .all(|payment| payment.customer.as_ref() == Some(&customer))
        );
        // Newest first: the first charge is last.
        let first = first.expect("one charge");
        assert_eq!(listed.last().map(|payment| &payment.intent), Some(&first.intent));
        assert_eq!(
            listed
                .last()
                .and_then(|payment| payment.metadata.get(REFERENCE_METADATA_KEY)),
            Some(&"top_0".to_owned())
        );
        assert!(
            payments
                .customer_payments(&customer, time_now() + 3_600)
                .await
                .expect("listed")
                .is_empty()
        );

        let charge_id = first.charge.clone().expect("a charge");
        assert_eq!(
            payments.charge_payment(&charge_id).await.expect("charge"),
            Some(first.intent.clone())
        );
        assert!(matches!(
            payments.charge_payment("ch_missing").await,
            Err(PaymentsError::NotFound(_))
        ));
        sandbox.shutdown().await;
    }

    fn time_now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs() as i64)
            .unwrap_or_default()
    }

    #[test]
    fn transient_statuses() {
        for status in [409, 424, 429, 500, 502, 503, 504] {
            assert!(retryable_status(status), "{status}");
        }
        for status in [400, 401, 402, 403, 404] {
            assert!(!retryable_status(status), "{status}");
        }
    }
}
