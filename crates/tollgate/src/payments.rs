//! Card payments for `tollgate serve`: Stripe when a secret key is set, otherwise the
//! built-in Stripe sandbox on a port of its own. Either way the same adapter speaks
//! Stripe's wire protocol, so there is one code path.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use rand::distr::Alphanumeric;
use tollgate_billing::{Billing, BillingSettings};
use tollgate_core::Clock;
use tollgate_store::SharedStore;
use tollgate_stripe::{StripeConfig, StripePayments, WebhookVerifier};
use tollgate_stripe_sandbox::{Sandbox, SandboxConfig};

use crate::ServeArgs;
use crate::config::Config;

/// The secret key Tollgate presents to its own sandbox (any `sk_test_…` is accepted).
const SANDBOX_SECRET_KEY: &str = "sk_test_tollgate_builtin_sandbox";

/// The payment flows and, without a Stripe key, the sandbox serving them.
pub struct PaymentsSetup {
    /// The flows the HTTP layer calls.
    pub billing: Billing,
    /// The running sandbox (kept alive for as long as the server runs).
    pub sandbox: Option<Sandbox>,
    /// One line for the start-up banner.
    pub description: String,
}

fn random_secret(prefix: &str) -> String {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    format!("{prefix}{random}")
}

/// Connects to Stripe, or starts the sandbox, and builds the flows over `store`.
pub async fn start(
    store: SharedStore,
    clock: Arc<dyn Clock>,
    config: &Config,
    args: &ServeArgs,
    public_url: &str,
) -> anyhow::Result<PaymentsSetup> {
    let settings = BillingSettings {
        topup_limits: config.topup_limits,
        public_url: public_url.trim_end_matches('/').to_owned(),
        default_return_url: format!("{}/billing", public_url.trim_end_matches('/')),
        issuer_name: config.receipt_issuer.clone(),
    };
    let (stripe, verifier, sandbox, description) = match &args.stripe_secret_key {
        Some(secret_key) if !secret_key.is_empty() => {
            let mut stripe = StripeConfig::new(secret_key.clone());
            stripe.api_base = args.stripe_api_base.clone();
            let verifier = match args.stripe_webhook_secret.as_deref() {
                Some(secret) if !secret.is_empty() => {
                    Some(WebhookVerifier::new(secret).context("TOLLGATE_STRIPE_WEBHOOK_SECRET")?)
                }
                _ => {
                    tracing::warn!(
                        "TOLLGATE_STRIPE_WEBHOOK_SECRET is not set: Stripe webhooks are refused; \
                         outcomes are still learnt on return from Stripe and by the recovery pass"
                    );
                    None
                }
            };
            let base = args.stripe_api_base.as_deref().unwrap_or("Stripe's API");
            (stripe, verifier, None, format!("Stripe ({base})"))
        }
        _ => {
            let webhook_secret = random_secret("whsec_");
            let mut sandbox_config = SandboxConfig::new(webhook_secret.clone());
            sandbox_config.webhook_url = Some(format!("{}/webhooks/stripe", settings.public_url));
            let sandbox = Sandbox::start(args.stripe_sandbox_addr, sandbox_config)
                .await
                .context("starting the built-in Stripe sandbox")?;
            let mut stripe = StripeConfig::new(SANDBOX_SECRET_KEY);
            stripe.api_base = Some(sandbox.base_url());
            let verifier = WebhookVerifier::new(webhook_secret).context("sandbox webhook secret")?;
            let description = format!(
                "built-in Stripe sandbox at {} (no TOLLGATE_STRIPE_SECRET_KEY; test card 4242 4242 4242 4242)",
                sandbox.base_url()
            );
            (stripe, Some(verifier), Some(sandbox), description)
        }
    };
    let payments = StripePayments::new(stripe).context("building the Stripe client")?;
    let billing = Billing::new(store, Arc::new(payments), verifier, clock, settings);
    Ok(PaymentsSetup {
        billing,
        sandbox,
        description,
    })
}

/// Resolves open top-ups at start and then every `interval_ms`, by asking the processor.
pub fn spawn_recovery(
    billing: Billing,
    interval_ms: u64,
    min_age_seconds: i64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match billing
                .recover_open_topups(time::Duration::seconds(min_age_seconds))
                .await
            {
                Ok(report) if report.examined > 0 => tracing::info!(
                    examined = report.examined,
                    resolved = report.resolved,
                    errors = report.errors,
                    "recovery pass over open top-ups"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "recovery pass failed; retried next interval"),
            }
        }
    })
}
