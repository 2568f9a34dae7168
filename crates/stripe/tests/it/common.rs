//! Shared helpers: a sandbox per test, the adapter pointed at it, a "browser" that drives the
//! hosted page with plain HTTP, and a webhook receiver that keeps the raw bytes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tollgate_core::{AccountId, Micros};
use tollgate_stripe::{
    Card, ChargeRequest, CheckoutPurpose, CheckoutRequest, CheckoutSession, CustomerId, Payment,
    PaymentMethodId, Payments, StripeConfig, StripePayments,
};
use tollgate_stripe_sandbox::{RetryPolicy, Sandbox, SandboxConfig};

pub const KEY: &str = "sk_test_tollgate_stripe_adapter";
pub const SECRET: &str = "whsec_tollgate_stripe_adapter";
pub const SUCCESS_URL: &str = "http://app.test/billing?session={CHECKOUT_SESSION_ID}";
pub const CANCEL_URL: &str = "http://app.test/billing?cancelled=1";

/// A sandbox on a free port with quick webhook retries.
pub async fn sandbox() -> Sandbox {
    let mut config = SandboxConfig::new(SECRET);
    config.retry = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        attempt_timeout: Duration::from_secs(2),
    };
    Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .expect("sandbox starts")
}

/// Adapter settings for the sandbox: generous timeout (a loaded CI machine must not turn a
/// normal call into a timeout), quick retries.
pub fn config(sb: &Sandbox) -> StripeConfig {
    StripeConfig {
        secret_key: KEY.into(),
        api_base: Some(sb.base_url()),
        timeout_ms: 10_000,
        max_retries: 2,
        retry_base_delay_ms: 20,
    }
}

/// The real adapter pointed at the sandbox.
pub fn payments(sb: &Sandbox) -> StripePayments {
    StripePayments::new(config(sb)).expect("adapter builds")
}

/// A fresh customer for `account`.
pub async fn customer(p: &(impl Payments + ?Sized), account: &str) -> CustomerId {
    let account = AccountId::parse(account).expect("valid account id");
    p.create_customer(
        &account,
        "Ada Lovelace",
        "ada@example.com",
        &format!("cus-{account}"),
    )
    .await
    .expect("customer created")
}

/// Dollars as micro-dollars.
pub fn usd(dollars: i64) -> Micros {
    Micros::from_dollars(dollars).expect("small amount")
}

/// A setup-mode request for `customer`.
pub fn save_card_request(customer: &CustomerId, reference: &str) -> CheckoutRequest {
    CheckoutRequest {
        customer: customer.clone(),
        purpose: CheckoutPurpose::SaveCard,
        success_url: SUCCESS_URL.into(),
        cancel_url: CANCEL_URL.into(),
        reference: reference.into(),
        metadata: BTreeMap::from([("account_id".to_string(), "acme".to_string())]),
        idempotency_key: format!("checkout-{reference}"),
    }
}

/// A payment-mode request for `customer`.
pub fn pay_request(customer: &CustomerId, reference: &str, amount: Micros) -> CheckoutRequest {
    CheckoutRequest {
        purpose: CheckoutPurpose::PayAndSaveCard {
            amount,
            description: "Tollgate top-up".into(),
        },
        ..save_card_request(customer, reference)
    }
}

/// An off-session charge request.
pub fn charge_request(
    customer: &CustomerId,
    card: &PaymentMethodId,
    amount: Micros,
    key: &str,
) -> ChargeRequest {
    ChargeRequest {
        customer: customer.clone(),
        payment_method: card.clone(),
        amount,
        idempotency_key: key.into(),
        description: "Auto top-up".into(),
        metadata: BTreeMap::from([("recharge".to_string(), key.to_string())]),
    }
}

/// One answer of the hosted page.
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
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client builds");
        Browser { client }
    }

    async fn finish(response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
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

    /// Opens the page, fills in the card form and submits it.
    pub async fn pay(&self, url: &str, number: &str) -> Page {
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

    /// Pays, answers a 3-D Secure challenge if one comes, and returns where the page sent the
    /// browser in the end.
    pub async fn pay_and_authenticate(&self, url: &str, number: &str) -> String {
        let page = self.pay(url, number).await;
        assert_eq!(page.status, 303, "{}", page.text);
        let mut location = page.location.expect("redirect has a location");
        if location.ends_with("/authenticate") {
            let challenge = self.open(&location).await;
            assert!(
                challenge.text.contains("id=\"complete-auth\""),
                "{}",
                challenge.text
            );
            let page = self.submit(&location, &[("action", "complete")]).await;
            assert_eq!(page.status, 303, "{}", page.text);
            location = page.location.expect("redirect has a location");
        }
        location
    }
}

/// Saves `number` for `customer` through a setup-mode page; returns the completed session.
pub async fn save_card(p: &(impl Payments + ?Sized), customer: &CustomerId, number: &str) -> CheckoutSession {
    let reference = format!("save-{customer}-{number}");
    let session = p
        .create_checkout(save_card_request(customer, &reference))
        .await
        .expect("checkout created");
    let url = session.url.clone().expect("open session has a url");
    let location = Browser::new().pay_and_authenticate(&url, number).await;
    assert_eq!(
        location,
        format!("http://app.test/billing?session={}", session.id)
    );
    p.retrieve_checkout(&session.id).await.expect("session retrieved")
}

/// The saved card of a completed session.
pub fn card_of(session: &CheckoutSession) -> Card {
    session.card.clone().expect("the session saved a card")
}

/// Charges the sandbox made (failed attempts included) and the successful ones.
pub fn charges(sb: &Sandbox) -> (usize, usize) {
    let state = sb.state();
    let all = state["charges"].as_array().cloned().unwrap_or_default();
    let ok = all.iter().filter(|c| c["status"] == "succeeded").count();
    (all.len(), ok)
}

/// Payment intents the sandbox holds.
pub fn intents(sb: &Sandbox) -> Vec<Value> {
    sb.state()["payment_intents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Asserts a payment succeeded for `amount`.
pub fn assert_succeeded(payment: &Payment, amount: Micros) {
    assert_eq!(
        payment.status,
        tollgate_stripe::PaymentStatus::Succeeded,
        "{payment:?}"
    );
    assert_eq!(payment.amount, amount);
    assert!(payment.intent.as_str().starts_with("pi_"));
    assert!(payment.charge.as_deref().is_some_and(|c| c.starts_with("ch_")));
}

/// One webhook request exactly as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub body: Vec<u8>,
    pub signature: String,
    pub event_type: String,
}

/// A webhook endpoint on a free port that records every request's raw bytes.
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

async fn receive(
    State(received): State<Arc<Mutex<Vec<Received>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let event_type = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_string))
        .unwrap_or_default();
    received.lock().expect("lock").push(Received {
        body: body.to_vec(),
        signature,
        event_type,
    });
    StatusCode::OK
}

impl Receiver {
    pub async fn start() -> Receiver {
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/webhooks/stripe", post(receive))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/webhooks/stripe"),
            received,
        }
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Waits (up to 15 s) until every listed type was received `count` times at least.
    pub async fn wait_for(&self, types: &[(&str, usize)]) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let all = self.all();
            let done = types
                .iter()
                .all(|(t, n)| all.iter().filter(|r| r.event_type == *t).count() >= *n);
            if done {
                return all;
            }
            let seen: Vec<&str> = all.iter().map(|r| r.event_type.as_str()).collect();
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {types:?}; received {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A fake Stripe that always answers with `status` and `body`, counting requests.
pub struct FakeStripe {
    pub base: String,
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeStripe {
    pub async fn start(status: u16, content_type: &'static str, body: &'static str) -> FakeStripe {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        let app = Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let status = StatusCode::from_u16(status).expect("valid status");
                (status, [("content-type", content_type)], body)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeStripe {
            base: format!("http://{addr}"),
            hits,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}
