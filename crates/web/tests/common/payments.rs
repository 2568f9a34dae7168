//! Card payments in tests: a Stripe sandbox per server, the real adapter pointed at it,
//! and a "browser" without JavaScript that fills in the sandbox's hosted card page.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tollgate_billing::{Billing, BillingSettings};
use tollgate_core::TopupLimits;
use tollgate_stripe::{StripeConfig, StripePayments, WebhookVerifier};
use tollgate_stripe_sandbox::{RetryPolicy, Sandbox, SandboxConfig};

use super::{Parts, TestServer};

/// How often the test servers' auto top-up worker polls.
pub const WORKER_INTERVAL_MS: u64 = 20;
/// The webhook secret every test sandbox signs with.
pub const WEBHOOK_SECRET: &str = "whsec_tollgate_web_tests";
/// Succeeds.
pub const CARD_OK: &str = "4242424242424242";
/// `card_declined` / `generic_decline`.
pub const CARD_DECLINED: &str = "4000000000000002";
/// `card_declined` / `insufficient_funds`.
pub const CARD_INSUFFICIENT_FUNDS: &str = "4000000000009995";
/// 3-D Secure on the hosted page; later off-session charges succeed.
pub const CARD_3DS_ONCE: &str = "4000002500003155";
/// Every off-session charge needs authentication.
pub const CARD_3DS_ALWAYS: &str = "4000002760003184";
/// Attaches, but every charge fails.
pub const CARD_ATTACH_THEN_FAIL: &str = "4000000000000341";

/// Starts a sandbox that delivers webhooks to `base` and the flows that use it.
pub async fn start(parts: &Parts, base: &str) -> (Sandbox, Billing) {
    let mut config = SandboxConfig::new(WEBHOOK_SECRET);
    config.webhook_url = Some(format!("{base}/webhooks/stripe"));
    config.retry = RetryPolicy {
        max_attempts: 6,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        attempt_timeout: Duration::from_secs(5),
    };
    let sandbox = Sandbox::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .expect("sandbox starts");
    let payments = StripePayments::new(StripeConfig {
        secret_key: "sk_test_tollgate_web_tests".to_owned(),
        api_base: Some(sandbox.base_url()),
        // Generous: a loaded CI machine must not turn a normal call into a timeout.
        timeout_ms: 10_000,
        max_retries: 2,
        retry_base_delay_ms: 20,
    })
    .expect("adapter builds");
    let billing = Billing::new(
        parts.store.clone(),
        Arc::new(payments),
        Some(WebhookVerifier::new(WEBHOOK_SECRET).expect("secret")),
        parts.clock.clone(),
        BillingSettings {
            topup_limits: TopupLimits::default(),
            public_url: base.to_owned(),
            default_return_url: format!("{base}/billing"),
            issuer_name: "Tollgate Test".to_owned(),
        },
    );
    (sandbox, billing)
}

/// One answer of a page.
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub text: String,
}

/// A browser without JavaScript: GETs pages, POSTs forms, doesn't follow redirects.
pub struct Browser {
    client: reqwest::Client,
}

impl Browser {
    pub fn new() -> Browser {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("HTTP client builds");
        Browser { client }
    }

    async fn finish(response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.expect("page body");
        Page {
            status,
            location,
            text,
        }
    }

    pub async fn open(&self, url: &str) -> Page {
        Self::finish(self.client.get(url).send().await.expect("page loads")).await
    }

    pub async fn submit(&self, url: &str, form: &[(&str, &str)]) -> Page {
        Self::finish(self.client.post(url).form(form).send().await.expect("form posts")).await
    }

    /// Fills in the hosted card page with `number` and submits it.
    pub async fn enter_card(&self, url: &str, number: &str) -> Page {
        let page = self.open(url).await;
        assert_eq!(page.status, 200, "{}", page.text);
        assert!(
            page.text.contains("id=\"cardNumber\""),
            "no card form: {}",
            page.text
        );
        self.submit(
            url,
            &[
                ("cardNumber", number),
                ("cardExpiry", "12 / 34"),
                ("cardCvc", "123"),
                ("billingName", "Ada Lovelace"),
            ],
        )
        .await
    }

    /// Pays on the hosted page, completing a 3-D Secure challenge if one comes; returns
    /// where the sandbox sends the browser (Tollgate's return URL).
    pub async fn complete_hosted_page(&self, url: &str, number: &str) -> String {
        let page = self.enter_card(url, number).await;
        assert_eq!(page.status, 303, "{}", page.text);
        let mut location = page.location.expect("redirect has a location");
        if location.ends_with("/authenticate") {
            let page = self.submit(&location, &[("action", "complete")]).await;
            assert_eq!(page.status, 303, "{}", page.text);
            location = page.location.expect("redirect has a location");
        }
        location
    }

    /// Follows Tollgate's return endpoint; returns where Tollgate sends the browser.
    pub async fn follow_return(&self, return_url: &str) -> String {
        let page = self.open(return_url).await;
        assert_eq!(page.status, 303, "return endpoint: {}", page.text);
        page.location.expect("redirect has a location")
    }
}

/// Charges the sandbox made: (all attempts, succeeded).
pub fn charges(sandbox: &Sandbox) -> (usize, usize) {
    let state = sandbox.state();
    let all = state["charges"].as_array().cloned().unwrap_or_default();
    let succeeded = all
        .iter()
        .filter(|charge| charge["status"] == "succeeded")
        .count();
    (all.len(), succeeded)
}

/// The first succeeded charge's id in the sandbox for a payment intent.
pub fn charge_of(sandbox: &Sandbox, payment_intent: &str) -> String {
    let state = sandbox.state();
    state["charges"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|charge| charge["payment_intent"] == payment_intent && charge["status"] == "succeeded")
        .and_then(|charge| charge["id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no succeeded charge for {payment_intent}: {state}"))
}

impl TestServer {
    pub fn sandbox(&self) -> &Sandbox {
        self.sandbox.as_ref().expect("this server takes card payments")
    }

    pub fn billing(&self) -> &Billing {
        self.billing.as_ref().expect("this server takes card payments")
    }

    /// Saves `number` as the account's card through the hosted page and Tollgate's return.
    /// Returns where Tollgate sent the browser in the end.
    pub async fn add_card(&self, account: &str, number: &str) -> String {
        let (status, setup) = self
            .post(
                &format!("/v1/accounts/{account}/payment_method/setup"),
                serde_json::json!({"return_url": "https://app.test/billing"}),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{setup}");
        let browser = Browser::new();
        let back = browser
            .complete_hosted_page(setup["url"].as_str().expect("url"), number)
            .await;
        browser.follow_return(&back).await
    }

    /// A top-up request with its key.
    pub async fn topup(&self, account: &str, amount: &str, key: &str) -> (reqwest::StatusCode, Value) {
        self.send(
            self.request(reqwest::Method::POST, &format!("/v1/accounts/{account}/topups"))
                .header("Idempotency-Key", key)
                .json(&serde_json::json!({"amount": amount, "return_url": "https://app.test/billing"})),
        )
        .await
    }

    /// Waits (up to 20 s) until `check` holds for the account's JSON.
    pub async fn wait_for_account(&self, account: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let body = self.account(account).await;
            if check(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the sandbox has delivered every webhook it holds (or given up on it).
    pub async fn settle_webhooks(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.sandbox().state();
            let unsettled: Vec<Value> = state["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|event| {
                    !matches!(
                        event["delivery"].as_str(),
                        Some("delivered" | "failed" | "dropped")
                    )
                })
                .cloned()
                .collect();
            if unsettled.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "webhooks still unsettled: {unsettled:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
