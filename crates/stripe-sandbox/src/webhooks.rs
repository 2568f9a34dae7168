//! Webhook signing and at-least-once delivery with bounded exponential back-off.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::watch;

use crate::App;
use crate::objects::DeliveryStatus;
use crate::wire::now;

/// The `Stripe-Signature` header value for `payload` signed at `timestamp` (`t=…,v1=…`).
pub fn signature_header(secret: &str, timestamp: i64, payload: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an empty digest anyway.
    let digest = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(payload.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!("t={timestamp},v1={digest}")
}

/// Retry policy for webhook deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per event, the first included (at least 1, at most 50).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles after each failure.
    pub base_delay: Duration,
    /// Upper bound of the delay between attempts.
    pub max_delay: Duration,
    /// How long one attempt may take before it counts as failed.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn delay_before(&self, attempt: u32) -> Duration {
        // attempt 2 waits base, attempt 3 waits 2×base, …, capped.
        let exp = attempt.saturating_sub(2).min(20);
        self.base_delay.saturating_mul(1u32 << exp).min(self.max_delay)
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.max_attempts.clamp(1, 50)
    }
}

/// One webhook delivery attempt, as recorded for tests and debugging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    /// The event sent.
    pub event_id: String,
    /// Its type, e.g. `checkout.session.completed`.
    pub event_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// The transport error, if it did not.
    pub error: Option<String>,
    /// When the attempt was made (Unix seconds).
    pub at: i64,
}

impl DeliveryRecord {
    /// Whether the receiver acknowledged the event.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Longest injected delay before a delivery.
const MAX_DELAY_MS: u64 = 5 * 60 * 1000;

/// A batch of events the deliverer should send now.
struct Job {
    events: Vec<String>,
    delay: Duration,
    duplicate: bool,
}

/// Pops the next events to send, applying the drop and reorder faults.
fn next_job(app: &App) -> Option<Job> {
    app.with(|state| {
        while let Some(id) = state.delivery_queue.pop_front() {
            let Some(ev) = state.events.get_mut(&id) else {
                continue; // evicted by the event cap
            };
            if state.webhook_url.is_none() {
                // No endpoint: keep it pending so a later flush can still send it.
                ev.delivery = DeliveryStatus::Pending;
                continue;
            }
            let faults = &mut state.webhook_faults;
            if faults.drop_next > 0 {
                faults.drop_next -= 1;
                ev.delivery = DeliveryStatus::Dropped;
                continue;
            }
            if faults.reorder_next > 0 {
                faults.reorder_next -= 1;
                ev.delivery = DeliveryStatus::Held;
                state.held.push(id);
                if state.webhook_faults.reorder_next > 0 {
                    continue;
                }
                let mut events: Vec<String> = state.held.drain(..).collect();
                events.reverse();
                return Some(Job {
                    events,
                    delay: Duration::from_millis(state.webhook_faults.delay_ms.min(MAX_DELAY_MS)),
                    duplicate: state.webhook_faults.duplicate,
                });
            }
            return Some(Job {
                events: vec![id],
                delay: Duration::from_millis(faults.delay_ms.min(MAX_DELAY_MS)),
                duplicate: faults.duplicate,
            });
        }
        None
    })
}

/// Sends one attempt; returns whether the receiver acknowledged it.
async fn attempt(app: &App, event_id: &str, attempt_no: u32) -> bool {
    let Some((url, body, event_type)) = app.with(|state| {
        let url = state.webhook_url.clone()?;
        let ev = state.events.get_mut(event_id)?;
        ev.attempts += 1;
        Some((url, ev.body.clone(), ev.type_.clone()))
    }) else {
        return false;
    };
    let signature = signature_header(&app.webhook_secret, now(), &body);
    let result = app
        .http
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .header("user-agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)")
        .header("stripe-signature", signature)
        .body(body.to_string())
        .send()
        .await;
    let (status, error) = match result {
        Ok(resp) => (Some(resp.status().as_u16()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let record = DeliveryRecord {
        event_id: event_id.to_string(),
        event_type,
        attempt: attempt_no,
        status,
        error,
        at: now(),
    };
    let ok = record.succeeded();
    tracing::debug!(
        event = event_id,
        attempt = attempt_no,
        ?status,
        "webhook delivery attempt"
    );
    app.with(|state| {
        state.record_delivery(record);
        if let Some(ev) = state.events.get_mut(event_id)
            && ok
        {
            ev.delivery = DeliveryStatus::Delivered;
        }
    });
    ok
}

/// Sleeps unless the sandbox shuts down first; returns false on shutdown.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

/// Retries a failed event in the background so later events are not blocked behind it.
fn spawn_retries(app: Arc<App>, event_id: String, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let policy = app.retry.clone();
        for n in 2..=policy.attempts() {
            if !sleep_or_stop(policy.delay_before(n), &mut stop).await {
                return;
            }
            if attempt(&app, &event_id, n).await {
                return;
            }
        }
        app.with(|state| {
            if let Some(ev) = state.events.get_mut(&event_id)
                && ev.delivery != DeliveryStatus::Delivered
            {
                ev.delivery = DeliveryStatus::Failed;
            }
        });
    });
}

/// The background task sending queued events in creation order until shutdown.
pub(crate) async fn run_deliverer(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(job) = next_job(&app) else {
            tokio::select! {
                () = app.wake.notified() => continue,
                _ = stop.changed() => return,
            }
        };
        for id in job.events {
            if !job.delay.is_zero() && !sleep_or_stop(job.delay, &mut stop).await {
                return;
            }
            if *stop.borrow() {
                return;
            }
            let first = attempt(&app, &id, 1).await;
            if job.duplicate {
                attempt(&app, &id, 1).await;
            }
            if !first {
                let delivered = app.with(|state| {
                    let ev = state.events.get_mut(&id);
                    match ev {
                        Some(ev) if ev.delivery == DeliveryStatus::Delivered => true,
                        Some(ev) => {
                            ev.delivery = DeliveryStatus::Retrying;
                            false
                        }
                        None => true,
                    }
                });
                if !delivered && app.retry.attempts() > 1 {
                    spawn_retries(app.clone(), id.clone(), stop.clone());
                } else if !delivered {
                    app.with(|state| {
                        if let Some(ev) = state.events.get_mut(&id) {
                            ev.delivery = DeliveryStatus::Failed;
                        }
                    });
                }
            }
        }
    }
}

/// Queues every event not yet acknowledged (dropped, held, failed, pending) for delivery now;
/// with `all`, every stored event, acknowledged or not.
pub(crate) fn flush(app: &App, all: bool) -> usize {
    app.with(|state| {
        let mut held: Vec<String> = state.held.drain(..).collect();
        held.reverse();
        state.webhook_faults.reorder_next = 0;
        let queued: std::collections::HashSet<String> = state.delivery_queue.iter().cloned().collect();
        let mut count = 0;
        for id in held {
            state.delivery_queue.push_back(id);
            count += 1;
        }
        let order: Vec<String> = state.event_order.iter().cloned().collect();
        for id in order {
            let Some(ev) = state.events.get(&id) else { continue };
            let resend = if queued.contains(&id) || ev.delivery == DeliveryStatus::Retrying {
                false
            } else {
                all || matches!(
                    ev.delivery,
                    DeliveryStatus::Dropped | DeliveryStatus::Failed | DeliveryStatus::Pending
                )
            };
            if resend {
                state.delivery_queue.push_back(id);
                count += 1;
            }
        }
        state.wake = true;
        count
    })
}

/// Queues one event for (re)delivery, whatever happened to it before.
pub(crate) fn redeliver(app: &App, id: &str) -> bool {
    app.with(|state| {
        if !state.events.contains_key(id) {
            return false;
        }
        state.held.retain(|h| h != id);
        state.delivery_queue.push_back(id.to_string());
        state.wake = true;
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        // Independent check: HMAC-SHA256("whsec_test", "1700000000.{}").
        let h = signature_header("whsec_test", 1_700_000_000, "{}");
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
            ..Default::default()
        };
        assert_eq!(policy.delay_before(2), Duration::from_millis(200));
        assert_eq!(policy.delay_before(3), Duration::from_millis(400));
        assert_eq!(policy.delay_before(4), Duration::from_millis(800));
        assert_eq!(policy.delay_before(5), Duration::from_secs(1));
    }
}
