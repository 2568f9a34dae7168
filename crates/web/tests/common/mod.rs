//! The real server on 127.0.0.1:0 against a fresh store (SQLite, or
//! PostgreSQL with `TOLLGATE_TEST_STORE=postgres`), with a manual clock and a
//! known operator key, plus request helpers.

#![allow(dead_code)] // Each test binary uses a different part of the helper.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::macros::datetime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate_billing::Billing;
use tollgate_core::pricing::default_price_book;
use tollgate_core::{ActionId, ActionSpec, ManualClock, Micros, PriceBook, TierBasis};
use tollgate_store::testing::TestDatabase;
use tollgate_store::{SharedStore, StoreRules};
use tollgate_stripe_sandbox::Sandbox;
use tollgate_web::{AppState, WebConfig};

pub mod payments;

/// The operator key every test server accepts.
pub const OPERATOR_KEY: &str = "tg_sk_testOperatorKey0123456789abcdef";
/// Where every test clock starts.
pub const START: time::OffsetDateTime = datetime!(2026-11-10 10:00 UTC);

/// How to set a test server up.
pub struct Options {
    pub price_book: PriceBook,
    pub max_body_bytes: usize,
    /// Card payments through a Stripe sandbox of the test's own; the clock then starts
    /// at the real now, since webhook signatures are checked against it.
    pub payments: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            price_book: default_price_book(),
            max_body_bytes: tollgate_web::DEFAULT_MAX_BODY_BYTES,
            payments: false,
        }
    }
}

/// The default book plus `deluxe` at $100,000 a unit: 10^12 units overflow.
pub fn book_with_deluxe() -> PriceBook {
    let book = default_price_book();
    let mut actions = book.actions().to_vec();
    actions.push(ActionSpec {
        id: ActionId::parse("deluxe").unwrap(),
        name: "Deluxe".to_owned(),
        unit: "report".to_owned(),
        list_price: Micros::from_dollars(100_000).unwrap(),
    });
    PriceBook::new(actions, book.tiers().to_vec()).unwrap()
}

/// What backs an app state; the database must outlive the store.
pub struct Parts {
    pub store: SharedStore,
    pub clock: Arc<ManualClock>,
    pub dir: TestDatabase,
}

/// An app state on a fresh database of the store `TOLLGATE_TEST_STORE` names,
/// for tests that call the app in process.
pub fn app_state(options: Options) -> (AppState, Parts) {
    let (config, parts) = config_and_parts(&options, START);
    (AppState::new(parts.store.clone(), config), parts)
}

fn config_and_parts(options: &Options, start: time::OffsetDateTime) -> (WebConfig, Parts) {
    let dir = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(start));
    let book = Arc::new(options.price_book.clone());
    let store = dir.open(StoreRules {
        price_book: book.clone(),
        tier_basis: TierBasis::Cycle,
        clock: clock.clone(),
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    });
    let mut config = WebConfig::new(book, clock.clone());
    config.operator_key = Some(OPERATOR_KEY.to_owned());
    config.booking_url = "https://calendly.example/sales".to_owned();
    config.max_body_bytes = options.max_body_bytes;
    (config, Parts { store, clock, dir })
}

/// A running server and what a test needs to poke at it.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub store: SharedStore,
    pub clock: Arc<ManualClock>,
    /// The Stripe sandbox, when the server takes card payments.
    pub sandbox: Option<Sandbox>,
    /// The payment flows, when the server takes card payments.
    pub billing: Option<Billing>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    worker: Option<JoinHandle<()>>,
    _dir: TestDatabase,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(Options::default()).await
    }

    /// A server whose card payments go through a Stripe sandbox of its own.
    pub async fn start_with_payments() -> TestServer {
        TestServer::start_with(Options {
            payments: true,
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(options: Options) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (state, parts, sandbox, billing) = if options.payments {
            // Storage precision: whole microseconds.
            let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
            let (mut config, parts) = config_and_parts(&options, now);
            config.public_url = base.clone();
            let (sandbox, billing) = payments::start(&parts, &base).await;
            let state = AppState::with_billing(parts.store.clone(), config, billing.clone());
            (state, parts, Some(sandbox), Some(billing))
        } else {
            let (state, parts) = app_state(options);
            (state, parts, None, None)
        };
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(tollgate_web::serve(listener, state, async {
            let _ = stopped.await;
        }));
        TestServer {
            base,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            worker: billing
                .as_ref()
                .map(|billing| billing.spawn_auto_recharge_worker(payments::WORKER_INTERVAL_MS)),
            store: parts.store,
            clock: parts.clock,
            sandbox,
            billing,
            shutdown: Some(shutdown),
            server: Some(server),
            _dir: parts.dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An authenticated request builder.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(OPERATOR_KEY)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.request(Method::POST, path).json(&body)).await
    }

    /// POSTs raw bytes as JSON (for malformed bodies).
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        self.send(
            self.request(Method::POST, path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn create_account(&self, id: &str) -> Value {
        let (status, body) = self
            .post(
                "/v1/accounts",
                json!({"id": id, "name": format!("{id} Inc."), "email": format!("billing@{id}.test")}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub async fn grant(&self, id: &str, amount: &str) -> Value {
        let (status, body) = self
            .post(
                &format!("/v1/accounts/{id}/grants"),
                json!({"amount": amount, "reason": "test credit"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// A funded account.
    pub async fn funded_account(&self, id: &str, amount: &str) -> Value {
        self.create_account(id).await;
        self.grant(id, amount).await;
        self.account(id).await
    }

    pub async fn account(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/accounts/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub async fn usage(&self, id: &str, action: &str, quantity: u64, key: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/v1/accounts/{id}/usage"),
            json!({"action": action, "quantity": quantity, "idempotency_key": key}),
        )
        .await
    }

    /// Everything a refused request must leave alone: balances, ledger, spend.
    pub async fn snapshot(&self, id: &str) -> Value {
        let (_, transactions) = self
            .get(&format!("/v1/accounts/{id}/transactions?limit=100"))
            .await;
        let (_, billing) = self.get(&format!("/v1/accounts/{id}/billing")).await;
        json!({"account": self.account(id).await, "transactions": transactions, "billing": billing})
    }

    /// The account's events, oldest first (at most 100).
    pub async fn events_of(&self, id: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/events?account_id={id}&limit=100")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut events = body["data"].as_array().unwrap().clone();
        events.reverse();
        events
    }

    /// The types of the account's events of one family (`topup.`, `auto_recharge.`), oldest first.
    pub async fn event_types(&self, id: &str, prefix: &str) -> Vec<String> {
        self.events_of(id)
            .await
            .iter()
            .filter_map(|event| event["type"].as_str())
            .filter(|kind| kind.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    pub async fn assert_ledger_clean(&self) {
        let report = self.store.verify_ledger().await.unwrap();
        assert!(report.is_clean(), "ledger problems: {:?}", report.problems);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }
}

/// Asserts an error response: status, code and (optionally) param.
pub fn assert_error(response: &(StatusCode, Value), status: StatusCode, code: &str, param: Option<&str>) {
    let (actual, body) = response;
    assert_eq!(*actual, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    match param {
        Some(param) => assert_eq!(body["error"]["param"], param, "{body}"),
        None => assert!(body["error"].get("param").is_none(), "{body}"),
    }
}

/// The sorted keys of a JSON object.
pub fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

/// Sorted key list from a literal, for comparisons with [`keys`].
pub fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    names.sort();
    names
}
