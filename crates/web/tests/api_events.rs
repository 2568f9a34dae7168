//! Events and operator webhooks over HTTP: recorded once per state change (in the
//! change's own transaction), listed and filtered, delivered signed to a real receiver
//! that fails, hangs and recovers, in order per account, across a restart, and given up
//! on only after the retry window.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use common::{TestServer, assert_error};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use tollgate_core::{Clock, DeliveryPolicy, ManualClock, TierBasis};
use tollgate_store::StoreRules;
use tollgate_web::EventSender;

/// What the receiver does with the next delivery.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    Hang,
}

#[derive(Clone, Debug)]
struct Received {
    signature: String,
    event_id_header: String,
    body: Vec<u8>,
}

/// A webhook receiver on a random port: answers from a script (then 200), records
/// everything it was sent.
#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<VecDeque<Answer>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    state.received.lock().unwrap().push(Received {
                        signature: header(&headers, "tollgate-signature"),
                        event_id_header: header(&headers, "tollgate-event-id"),
                        body: body.to_vec(),
                    });
                    let answer = state.script.lock().unwrap().pop_front();
                    match answer {
                        Some(Answer::Hang) => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            AxumStatus::OK
                        }
                        Some(Answer::Status(code)) => AxumStatus::from_u16(code).unwrap(),
                        None => AxumStatus::NO_CONTENT,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn answer(&self, answers: &[Answer]) {
        self.script.lock().unwrap().extend(answers.iter().copied());
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Checks `Tollgate-Signature` the way a receiver would, from the documented scheme.
fn verify(secret: &str, received: &Received) -> bool {
    let mut timestamp = None;
    let mut signature = None;
    for part in received.signature.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => timestamp = Some(value.to_owned()),
            Some(("v1", value)) => signature = Some(value.to_owned()),
            _ => {}
        }
    }
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return false;
    };
    let age = time::OffsetDateTime::now_utc().unix_timestamp() - timestamp.parse::<i64>().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&received.body);
    age.abs() < 300 && hex::encode(mac.finalize().into_bytes()) == signature
}

fn fast_policy() -> DeliveryPolicy {
    DeliveryPolicy {
        first_retry_ms: 1_000,
        max_retry_ms: 60_000,
        give_up_after_ms: 24 * 3_600_000,
        timeout_ms: 300,
    }
}

async fn register(server: &TestServer, url: &str, events: Value) -> Value {
    let (status, body) = server
        .post("/v1/webhook_endpoints", json!({"url": url, "events": events}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn events(server: &TestServer, query: &str) -> Vec<Value> {
    let (status, body) = server.get(&format!("/v1/events?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().unwrap().clone()
}

fn types(events: &[Value]) -> Vec<String> {
    // The list is newest first; read it in the order things happened.
    events
        .iter()
        .rev()
        .map(|event| event["type"].as_str().unwrap().to_owned())
        .collect()
}

async fn delivery_log(server: &TestServer, endpoint: &str) -> Value {
    let (status, body) = server
        .get(&format!("/v1/webhook_endpoints/{endpoint}/deliveries"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn grant(server: &TestServer, account: &str, amount: &str) {
    server.grant(account, amount).await;
}

async fn charge(server: &TestServer, account: &str, action: &str, quantity: u64, key: &str) {
    let (status, body) = server.usage(account, action, quantity, key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn balance_and_tier_events_fire_once_per_crossing_and_are_listed_and_filtered() {
    let server = TestServer::start().await;
    server.create_account("acme").await;
    server.create_account("globex").await;
    grant(&server, "acme", "150.00").await;
    // $90 at Starter: spend $90, balance $60. Nothing crossed.
    charge(&server, "acme", "email_finder", 3_000, "a1").await;
    assert!(events(&server, "account_id=acme").await.is_empty());
    // $30 more: spend $120 reaches Growth ($100). Balance $30.
    charge(&server, "acme", "email_finder", 1_000, "a2").await;
    // A replay records nothing new.
    charge(&server, "acme", "email_finder", 1_000, "a2").await;
    // 1,200 API calls at Growth (10% off $0.02) = $21.60: balance $8.40, below $10.
    charge(&server, "acme", "api", 1_200, "a3").await;
    // Still below: no second `balance.low`.
    charge(&server, "acme", "api", 100, "a4").await;
    // An operator debit to exactly zero: depleted.
    server
        .post(
            "/v1/accounts/acme/grants",
            json!({"amount": "-6.60", "reason": "correction"}),
        )
        .await;
    // Back above the line, then below it again: a second crossing, a second event.
    grant(&server, "acme", "50.00").await;
    charge(&server, "acme", "api", 2_500, "a5").await;
    // Another account's events stay its own.
    grant(&server, "globex", "20.00").await;
    charge(&server, "globex", "api", 600, "g1").await;

    let acme = events(&server, "account_id=acme").await;
    assert_eq!(
        types(&acme),
        ["tier.upgraded", "balance.low", "balance.depleted", "balance.low"]
    );
    let upgraded = &acme[3];
    assert_eq!(upgraded["object"], "event");
    assert_eq!(upgraded["account_id"], "acme");
    assert_eq!(
        upgraded["data"],
        json!({"tier": "growth", "previous_tier": "starter"})
    );
    assert!(upgraded["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(
        acme[2]["data"],
        json!({"available_balance": "8.40", "low_level": "10.00"})
    );
    assert_eq!(acme[1]["data"], json!({"available_balance": "0.00"}));
    assert_eq!(acme[0]["data"]["available_balance"], "5.00");

    assert_eq!(
        types(&events(&server, "account_id=globex").await),
        ["balance.low"]
    );
    let lows = events(&server, "type=balance.low").await;
    assert_eq!(lows.len(), 3);
    assert_eq!(
        types(&events(&server, "type=balance.low&account_id=acme").await).len(),
        2
    );

    // Pagination by cursor, and the single-event route.
    let (_, first) = server.get("/v1/events?limit=2").await;
    assert_eq!(first["has_more"], true);
    let last_id = first["data"][1]["id"].as_str().unwrap();
    let (_, rest) = server
        .get(&format!("/v1/events?limit=10&starting_after={last_id}"))
        .await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 3);
    let (status, one) = server.get(&format!("/v1/events/{last_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, first["data"][1]);

    // Bad filters are named; nothing is listed for them.
    assert_error(
        &server.get("/v1/events?type=balance.lowish").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("type"),
    );
    assert_error(
        &server.get("/v1/events?starting_after=evt_nope").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("starting_after"),
    );
    assert_error(
        &server.get("/v1/events/evt_nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn endpoints_are_validated_audited_and_listed() {
    let server = TestServer::start().await;
    for (body, param) in [
        (json!({"url": "ftp://example.com/x", "events": ["*"]}), "url"),
        (json!({"url": "not a url", "events": ["*"]}), "url"),
        (json!({"url": "https://example.com/x", "events": []}), "events"),
        (
            json!({"url": "https://example.com/x", "events": ["*", "balance.low"]}),
            "events",
        ),
        (
            json!({"url": "https://example.com/x", "events": ["balance.low", "nope"]}),
            "events[1]",
        ),
    ] {
        assert_error(
            &server.post("/v1/webhook_endpoints", body).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(param),
        );
    }
    let (_, none) = server.get("/v1/webhook_endpoints").await;
    assert_eq!(none["data"], json!([]));

    let created = register(
        &server,
        "https://example.com/hooks",
        json!(["topup.failed", "balance.low"]),
    )
    .await;
    assert!(created["id"].as_str().unwrap().starts_with("we_"));
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["events"], json!(["balance.low", "topup.failed"]));
    assert_eq!(created["status"], "enabled");
    let (_, listed) = server.get("/v1/webhook_endpoints").await;
    assert_eq!(listed["data"], json!([created.clone()]));

    let id = created["id"].as_str().unwrap();
    let (status, disabled) = server
        .send(server.request(Method::DELETE, &format!("/v1/webhook_endpoints/{id}")))
        .await;
    assert_eq!(status, StatusCode::OK, "{disabled}");
    assert_eq!(disabled["status"], "disabled");
    assert_error(
        &server
            .send(server.request(Method::DELETE, "/v1/webhook_endpoints/we_nope"))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );

    let (_, audit) = server.get("/v1/audit").await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions[..2],
        ["webhook_endpoint.disabled", "webhook_endpoint.created"]
    );
    assert_eq!(audit["data"][1]["actor"], "api_key:operator");
    assert!(
        audit["data"][1]["after"]
            .as_str()
            .unwrap()
            .contains("balance.low,topup.failed")
    );
}

#[tokio::test]
async fn deliveries_are_signed_retried_after_errors_and_timeouts_and_sent_in_order() {
    let server = TestServer::start().await;
    let (receiver, url) = Receiver::start().await;
    let endpoint = register(&server, &url, json!(["*"])).await;
    let (_, only_low_url) = Receiver::start().await;
    let only_low = register(&server, &only_low_url, json!(["balance.depleted"])).await;
    let secret = endpoint["secret"].as_str().unwrap();
    let sender = EventSender::new(fast_policy()).unwrap();

    server.create_account("acme").await;
    grant(&server, "acme", "150.00").await;
    charge(&server, "acme", "email_finder", 4_000, "a1").await; // $120: Growth, balance $30.
    charge(&server, "acme", "api", 1_200, "a2").await; // $21.60: balance $8.40, low.
    let recorded = events(&server, "account_id=acme").await;
    assert_eq!(types(&recorded), ["tier.upgraded", "balance.low"]);

    // Attempt 1 gets a 500; the next event of the account waits behind it.
    receiver.answer(&[Answer::Status(500), Answer::Hang]);
    assert_eq!(sender.deliver_due(server.store.as_ref()).await.unwrap(), 1);
    let endpoint_id = endpoint["id"].as_str().unwrap();
    let after_500 = delivery_log(&server, endpoint_id).await;
    let first = &after_500["data"][1];
    assert_eq!(first["event"]["type"], "tier.upgraded");
    assert_eq!(first["status"], "pending");
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["last_status_code"], 500);
    assert_eq!(after_500["data"][0]["attempts"], 0, "the later event waits");

    // Not due again until the back-off has passed.
    assert_eq!(sender.deliver_due(server.store.as_ref()).await.unwrap(), 0);
    server.clock.advance(time::Duration::milliseconds(1_000));
    // Attempt 2: the receiver hangs past the 300 ms timeout.
    assert_eq!(sender.deliver_due(server.store.as_ref()).await.unwrap(), 1);
    let after_timeout = delivery_log(&server, endpoint_id).await;
    assert_eq!(after_timeout["data"][1]["attempts"], 2);
    assert!(
        after_timeout["data"][1]["last_error"]
            .as_str()
            .unwrap()
            .contains("300 ms"),
        "{after_timeout}"
    );
    assert_eq!(after_timeout["data"][1]["last_status_code"], Value::Null);
    // The wait doubles: 1 s is not enough now, 2 s is.
    server.clock.advance(time::Duration::milliseconds(1_000));
    assert_eq!(sender.deliver_due(server.store.as_ref()).await.unwrap(), 0);
    server.clock.advance(time::Duration::milliseconds(1_000));
    // Attempt 3 succeeds; the second event follows in the next round of the same pass.
    assert_eq!(sender.deliver_due(server.store.as_ref()).await.unwrap(), 2);
    let delivered = delivery_log(&server, endpoint_id).await;
    for delivery in delivered["data"].as_array().unwrap() {
        assert_eq!(delivery["status"], "delivered", "{delivery}");
        assert!(delivery["delivered_at"].is_string());
    }
    // Nothing more to send.
    assert_eq!(sender.deliver_due(server.store.as_ref()).await.unwrap(), 0);

    let received = receiver.received();
    assert_eq!(received.len(), 4);
    let ids: Vec<String> = received
        .iter()
        .map(|delivery| {
            assert!(verify(secret, delivery), "signature of {}", delivery.signature);
            assert!(!verify("whsec_wrong", delivery));
            let body: Value = serde_json::from_slice(&delivery.body).unwrap();
            assert_eq!(body["id"], delivery.event_id_header);
            body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    // The same event id on every attempt, and the account's order kept.
    let oldest = recorded[1]["id"].as_str().unwrap();
    let newest = recorded[0]["id"].as_str().unwrap();
    assert_eq!(ids, [oldest, oldest, oldest, newest]);
    let body: Value = serde_json::from_slice(&received[3].body).unwrap();
    assert_eq!(body, recorded[0]);

    // The endpoint that only wants `balance.depleted` got nothing.
    let only_low_id = only_low["id"].as_str().unwrap();
    let (_, its_log) = server
        .get(&format!("/v1/webhook_endpoints/{only_low_id}/deliveries"))
        .await;
    assert_eq!(its_log["data"], json!([]));
}

#[tokio::test]
async fn a_delivery_is_given_up_only_after_the_retry_window_and_a_disabled_endpoint_gets_nothing() {
    let server = TestServer::start().await;
    let (receiver, url) = Receiver::start().await;
    let endpoint = register(&server, &url, json!(["balance.low"])).await;
    let sender = EventSender::new(fast_policy()).unwrap();
    server.create_account("acme").await;
    grant(&server, "acme", "20.00").await;
    charge(&server, "acme", "api", 600, "a1").await; // $12: balance $8, low.
    receiver.answer(&[Answer::Status(503); 64]);
    // Keep failing for most of a day: still pending.
    let mut attempts = 0;
    for _ in 0..60 {
        attempts += sender.deliver_due(server.store.as_ref()).await.unwrap();
        server.clock.advance(time::Duration::minutes(30));
        if server.clock.now() - common::START > time::Duration::hours(23) {
            break;
        }
    }
    let path = format!(
        "/v1/webhook_endpoints/{}/deliveries",
        endpoint["id"].as_str().unwrap()
    );
    let (_, log) = server.get(&path).await;
    assert_eq!(log["data"][0]["status"], "pending", "{log}");
    assert!(attempts >= 6, "{attempts}");
    // Past the window: the next failure gives up.
    server.clock.advance(time::Duration::hours(2));
    assert_eq!(sender.deliver_due(server.store.as_ref()).await.unwrap(), 1);
    let (_, log) = server.get(&path).await;
    assert_eq!(log["data"][0]["status"], "failed", "{log}");
    assert_eq!(log["data"][0]["last_status_code"], 503);
    assert_eq!(log["data"][0]["next_attempt_at"], Value::Null);
    assert_eq!(sender.deliver_due(server.store.as_ref()).await.unwrap(), 0);

    // Disabled: new events are recorded but not sent to it.
    let id = endpoint["id"].as_str().unwrap();
    server
        .send(server.request(Method::DELETE, &format!("/v1/webhook_endpoints/{id}")))
        .await;
    grant(&server, "acme", "50.00").await;
    charge(&server, "acme", "api", 2_500, "a2").await;
    assert_eq!(events(&server, "type=balance.low").await.len(), 2);
    let sent_before = receiver.received().len();
    assert_eq!(sender.deliver_due(server.store.as_ref()).await.unwrap(), 0);
    assert_eq!(receiver.received().len(), sent_before);
}

#[tokio::test]
async fn no_event_is_lost_across_a_restart_before_delivery() {
    let database = tollgate_store::testing::TestDatabase::new();
    let clock = Arc::new(ManualClock::new(common::START));
    let rules = || StoreRules {
        price_book: Arc::new(tollgate_core::pricing::default_price_book()),
        tier_basis: TierBasis::Cycle,
        clock: clock.clone(),
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    };
    let (receiver, url) = Receiver::start().await;
    let account = tollgate_core::AccountId::parse("acme").unwrap();
    {
        let store = database.open(rules());
        store
            .create_webhook_endpoint(tollgate_store::NewWebhookEndpoint {
                id: "we_restart".to_owned(),
                url: url.clone(),
                secret: "whsec_restart".to_owned(),
                events: tollgate_core::EventSelection::All,
                actor: tollgate_core::Actor::System,
            })
            .await
            .unwrap();
        store
            .create_account(
                tollgate_core::NewAccount::new(account.clone(), "Acme", "billing@acme.test").unwrap(),
            )
            .await
            .unwrap();
        let credit = tollgate_core::GrantCommand::new(
            account.clone(),
            tollgate_core::Micros::from_dollars(5).unwrap(),
            "credit",
            None,
            tollgate_core::Actor::System,
        )
        .unwrap();
        store.grant(credit).await.unwrap();
        let debit = tollgate_core::GrantCommand::new(
            account.clone(),
            tollgate_core::Micros::from_dollars(-5).unwrap(),
            "debit",
            None,
            tollgate_core::Actor::System,
        )
        .unwrap();
        store.grant(debit).await.unwrap();
        // A claim taken and never answered: the process dies holding it.
        let claimed = store.claim_deliveries(60_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].event.kind, tollgate_core::EventType::BalanceDepleted);
    }
    // A new process on the same database: the lease runs out, the event goes out.
    let store = database.open(rules());
    let sender = EventSender::new(fast_policy()).unwrap();
    assert_eq!(
        sender.deliver_due(store.as_ref()).await.unwrap(),
        0,
        "still leased"
    );
    clock.advance(time::Duration::seconds(61));
    assert_eq!(sender.deliver_due(store.as_ref()).await.unwrap(), 1);
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let body: Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body["type"], "balance.depleted");
    assert_eq!(body["account_id"], "acme");
}
