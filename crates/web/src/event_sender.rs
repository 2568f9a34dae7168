//! The background task that delivers recorded events to the operator's webhook
//! endpoints: signed, at least once, in order per account and endpoint, retried with
//! back-off for the policy's window (at least 24 h).
//!
//! The outbox makes it crash-safe: a delivery is a row written with its event, claimed
//! here under a lease and marked once the endpoint answers. A process that dies mid-send
//! leaves the lease to run out and the delivery to be sent again (hence "at least once",
//! with a stable event id to deduplicate by).

use std::time::Duration;

use futures::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinHandle;
use tollgate_core::DeliveryPolicy;
use tollgate_store::{DeliveryAttempt, DueDelivery, SharedStore, Store, StoreResult};

use crate::api::events::Event;

/// Deliveries claimed per round.
pub const DELIVERY_BATCH: usize = 32;
/// Deliveries in flight at once within a round.
pub const DELIVERY_CONCURRENCY: usize = 8;
/// Rounds one pass makes before it sleeps, so a backlog never starves the store.
pub const MAX_ROUNDS_PER_PASS: usize = 16;
/// How long a claim lasts beyond the attempt's own timeout.
const LEASE_MARGIN_MS: u64 = 30_000;
/// Longest error text kept in the delivery log.
const MAX_ERROR_CHARS: usize = 300;

/// The header carrying the signature: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "t.body")>`.
pub const SIGNATURE_HEADER: &str = "Tollgate-Signature";

/// `Tollgate-Signature`'s value for `body` signed with `secret` at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends deliveries to endpoints; cheap to clone.
#[derive(Clone, Debug)]
pub struct EventSender {
    client: reqwest::Client,
    policy: DeliveryPolicy,
}

impl EventSender {
    /// A sender whose attempts time out after the policy's `timeout_ms`.
    pub fn new(policy: DeliveryPolicy) -> Result<EventSender, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(policy.timeout_ms))
            .connect_timeout(Duration::from_millis(policy.timeout_ms))
            // A redirect is an answer to log, not a place to send the event to.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Tollgate-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(EventSender { client, policy })
    }

    /// Delivers what is due now in bounded rounds; returns how many attempts were made.
    pub async fn deliver_due(&self, store: &dyn Store) -> StoreResult<usize> {
        let mut attempted = 0;
        for _ in 0..MAX_ROUNDS_PER_PASS {
            let lease_ms = self.policy.timeout_ms.saturating_add(LEASE_MARGIN_MS);
            let due = store.claim_deliveries(lease_ms, DELIVERY_BATCH).await?;
            let claimed = due.len();
            let outcomes: Vec<_> = futures::stream::iter(due)
                .map(|delivery| async move {
                    let attempt = self.send(&delivery).await;
                    (delivery, attempt)
                })
                .buffer_unordered(DELIVERY_CONCURRENCY)
                .collect()
                .await;
            for (delivery, attempt) in outcomes {
                let delivered = attempt.error.is_none();
                store
                    .record_delivery_attempt(
                        &delivery.endpoint,
                        delivery.event.sequence,
                        attempt,
                        self.policy,
                    )
                    .await?;
                crate::telemetry::event_delivery(delivered);
            }
            attempted += claimed;
            // A delivered event unblocks its account's next one: look again until
            // nothing is due (failures are rescheduled into the future, so this ends).
            if claimed == 0 {
                break;
            }
        }
        Ok(attempted)
    }

    /// One attempt: POST the signed event, 2xx is delivered, anything else is a failure.
    async fn send(&self, delivery: &DueDelivery) -> DeliveryAttempt {
        let event = Event::render(&delivery.event);
        let body = match serde_json::to_vec(&event) {
            Ok(body) => body,
            Err(error) => {
                return DeliveryAttempt {
                    status_code: None,
                    error: Some(format!("the event could not be encoded: {error}")),
                };
            }
        };
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let request = self
            .client
            .post(&delivery.url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signature(&delivery.secret, timestamp, &body))
            .header("Tollgate-Event-Id", &event.id)
            .header("Tollgate-Event-Type", event.kind)
            .body(body);
        match request.send().await {
            Ok(response) if response.status().is_success() => DeliveryAttempt {
                status_code: Some(response.status().as_u16()),
                error: None,
            },
            Ok(response) => DeliveryAttempt {
                status_code: Some(response.status().as_u16()),
                error: Some(format!(
                    "the endpoint answered HTTP {}",
                    response.status().as_u16()
                )),
            },
            Err(error) => {
                let why = if error.is_timeout() {
                    format!("no answer within {} ms", self.policy.timeout_ms)
                } else if error.is_connect() {
                    format!("could not connect: {error}")
                } else {
                    format!("request failed: {error}")
                };
                DeliveryAttempt {
                    status_code: None,
                    error: Some(why.chars().take(MAX_ERROR_CHARS).collect()),
                }
            }
        }
    }
}

/// Delivers due events every `interval_ms` until the returned task is aborted.
pub fn spawn_event_sender(store: SharedStore, sender: EventSender, interval_ms: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match sender.deliver_due(store.as_ref()).await {
                Ok(0) => {}
                Ok(attempted) => tracing::debug!(attempted, "event deliveries attempted"),
                // The next tick retries; claimed deliveries come back when their lease ends.
                Err(error) => tracing::warn!(%error, "event delivery pass failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            signature("whsec_test", 1_700_000_000, b"{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
        let header = signature("whsec_test", 1_700_000_000, b"{}");
        assert_ne!(header, signature("whsec_other", 1_700_000_000, b"{}"));
        assert_ne!(header, signature("whsec_test", 1_700_000_001, b"{}"));
        assert_ne!(header, signature("whsec_test", 1_700_000_000, b"{ }"));
    }
}
