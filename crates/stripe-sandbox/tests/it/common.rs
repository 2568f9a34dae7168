//! Shared helpers: a sandbox per test, HTTP and async-stripe clients, a webhook receiver and a
//! "browser" that drives the hosted page with plain form posts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tollgate_stripe_sandbox::{RetryPolicy, Sandbox, SandboxConfig};

pub const KEY: &str = "sk_test_tollgate_sandbox";
pub const SECRET: &str = "whsec_test_tollgate";

/// A sandbox on a free port with quick webhook retries.
pub async fn sandbox() -> Sandbox {
    let mut cfg = SandboxConfig::new(SECRET);
    cfg.retry = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        attempt_timeout: Duration::from_secs(2),
    };
    Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
        .await
        .expect("sandbox starts")
}

/// An async-stripe client pointed at the sandbox.
pub fn stripe(sb: &Sandbox) -> stripe::Client {
    stripe::ClientBuilder::new(KEY)
        .url(sb.base_url())
        .build()
        .expect("client builds")
}

/// A plain HTTP client speaking Stripe's form encoding, not following redirects.
pub struct Http {
    pub client: reqwest::Client,
    pub base: String,
}

/// One response: status, headers and body as JSON (or `Value::Null`).
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Http {
    pub fn new(sb: &Sandbox) -> Http {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        Http {
            client,
            base: sb.base_url(),
        }
    }

    async fn finish(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            json,
            text,
        }
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Resp {
        self.post_with(path, form, None).await
    }

    pub async fn post_with(&self, path: &str, form: &[(&str, &str)], key: Option<&str>) -> Resp {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .form(form);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        Self::finish(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        Self::finish(
            self.client
                .get(format!("{}{path}", self.base))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// POST JSON to an admin endpoint (no API key).
    pub async fn admin(&self, path: &str, body: Value) -> Resp {
        Self::finish(
            self.client
                .post(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// A page of the hosted UI (absolute URL or path).
    pub async fn page(&self, url: &str) -> Resp {
        let url = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("{}{url}", self.base)
        };
        Self::finish(self.client.get(url).send().await.unwrap()).await
    }

    /// Submits an HTML form like a browser would.
    pub async fn submit(&self, url: &str, form: &[(&str, &str)]) -> Resp {
        let url = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("{}{url}", self.base)
        };
        Self::finish(self.client.post(url).form(form).send().await.unwrap()).await
    }

    pub async fn customer(&self, email: &str) -> String {
        let r = self
            .post(
                "/v1/customers",
                &[("email", email), ("metadata[account_id]", "acme")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.json["id"].as_str().unwrap().to_string()
    }

    /// A setup-mode Checkout session; returns (id, hosted url).
    pub async fn setup_session(&self, customer: &str) -> (String, String) {
        let r = self
            .post(
                "/v1/checkout/sessions",
                &[
                    ("mode", "setup"),
                    ("currency", "usd"),
                    ("customer", customer),
                    (
                        "success_url",
                        "http://app.test/billing?session={CHECKOUT_SESSION_ID}",
                    ),
                    ("cancel_url", "http://app.test/billing?cancelled=1"),
                    ("metadata[account_id]", "acme"),
                    ("payment_method_types[0]", "card"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        (
            r.json["id"].as_str().unwrap().to_string(),
            r.json["url"].as_str().unwrap().to_string(),
        )
    }

    /// Fills the card form of a hosted page.
    pub async fn pay(&self, url: &str, number: &str) -> Resp {
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

    /// Saves a card through setup-mode Checkout (answering 3-D Secure if asked); returns the PaymentMethod id.
    pub async fn save_card(&self, customer: &str, number: &str) -> String {
        let (id, url) = self.setup_session(customer).await;
        let r = self.pay(&url, number).await;
        assert_eq!(r.status, 303, "{}", r.text);
        let mut location = r.headers["location"].to_str().unwrap().to_string();
        if location.ends_with("/authenticate") {
            let r = self.submit(&location, &[("action", "complete")]).await;
            assert_eq!(r.status, 303, "{}", r.text);
            location = r.headers["location"].to_str().unwrap().to_string();
        }
        assert_eq!(location, format!("http://app.test/billing?session={id}"));
        let s = self
            .get(&format!("/v1/checkout/sessions/{id}?expand[]=setup_intent"))
            .await;
        s.json["setup_intent"]["payment_method"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// One webhook request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub body: String,
    pub signature: String,
    pub event: Value,
}

impl Received {
    pub fn type_(&self) -> &str {
        self.event["type"].as_str().unwrap_or("")
    }
    pub fn id(&self) -> &str {
        self.event["id"].as_str().unwrap_or("")
    }
}

#[derive(Clone, Default)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    fail_next: Arc<AtomicU32>,
}

/// A tiny webhook endpoint recording every request.
pub struct Receiver {
    pub url: String,
    state: ReceiverState,
}

async fn receive(State(state): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let body = String::from_utf8(body.to_vec()).unwrap();
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let event = serde_json::from_str(&body).unwrap_or(Value::Null);
    state.received.lock().unwrap().push(Received {
        body,
        signature,
        event,
    });
    let failing = state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = ReceiverState::default();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    /// Answer 500 to the next `n` requests.
    pub fn fail_next(&self, n: u32) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn all(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn types(&self) -> Vec<String> {
        self.all().iter().map(|r| r.type_().to_string()).collect()
    }

    /// Waits (up to 10 s) until `pred` holds for what was received.
    pub async fn wait_until(&self, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.all();
            if pred(&all) {
                return all;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out; received {:?}",
                self.types()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every listed event type was received at least once.
    pub async fn wait_for_types(&self, types: &[&str]) -> Vec<Received> {
        self.wait_until(|all| types.iter().all(|t| all.iter().any(|r| r.type_() == *t)))
            .await
    }
}
