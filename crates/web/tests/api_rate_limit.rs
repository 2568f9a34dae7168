//! Per-key rate limiting: `429 rate_limited` with `Retry-After`, per key. Runs on
//! SQLite, and on PostgreSQL with `TOLLGATE_TEST_STORE=postgres` (API keys are
//! looked up in the store, so both backends must serve them).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tollgate_core::pricing::default_price_book;
use tollgate_core::{ManualClock, TierBasis};
use tollgate_store::testing::TestDatabase;
use tollgate_store::{ApiKeyRecord, StoreRules};
use tollgate_web::{AppState, WebConfig, app, auth};
use tower::ServiceExt;

fn request(key: &str) -> Request<Body> {
    Request::get("/v1/tiers")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_while_other_keys_pass() {
    // The store the other web tests use: `TOLLGATE_TEST_STORE` picks it.
    let database = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(
        time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000),
    ));
    let book = Arc::new(default_price_book());
    let store = database.open(StoreRules {
        price_book: book.clone(),
        tier_basis: TierBasis::Cycle,
        clock: clock.clone(),
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    });
    let other_key = auth::generate_api_key();
    store
        .insert_api_key(ApiKeyRecord {
            id: "key_other".to_owned(),
            key_hash: auth::hash_api_key(&other_key),
            label: "other".to_owned(),
            created_at: tollgate_core::Clock::now(clock.as_ref()),
        })
        .await
        .unwrap();
    let mut config = WebConfig::new(book, clock);
    config.operator_key = Some("tg_sk_operator".to_owned());
    // One per second, bursts of two: the third request in a row is refused.
    config.rate_limit_per_second = 1;
    let router = app(AppState::new(store, config));

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(router.clone().oneshot(request("tg_sk_operator")).await.unwrap());
    }
    assert_eq!(statuses[0].status(), StatusCode::OK);
    assert_eq!(statuses[1].status(), StatusCode::OK);
    let refused = statuses.pop().unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let body = axum::body::to_bytes(refused.into_body(), 64 * 1024)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");

    // Buckets are per key: another key is not affected.
    let other = router.clone().oneshot(request(&other_key)).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    // A wrong key is still 401, not 429.
    let wrong = router.oneshot(request("tg_sk_wrong")).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
}
