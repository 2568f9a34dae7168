//! The load generator every HTTP row shares: in-process tokio tasks, one
//! keep-alive reqwest client, loopback only. The same generator drives the
//! trivial handler (H), the naive baselines and Tollgate, so client CPU is
//! the same tax on every row and the ratios compare servers, not clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::task::JoinSet;

/// Which accounts the events go to.
#[derive(Clone, Copy, Debug)]
pub enum Accounts {
    /// Uniformly over `0..n`.
    Uniform(usize),
    /// All to account 0.
    Hot,
}

/// What one request carries.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// `POST {base}/v1/accounts/{id}/usage` with one event.
    Single,
    /// `POST {base}/v1/usage/batch` with this many events.
    Batch(usize),
}

/// One load run against one server.
#[derive(Clone, Debug)]
pub struct Spec {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Bearer token sent with every request.
    pub token: String,
    pub accounts: Accounts,
    pub shape: Shape,
    /// Requests in flight at once (closed loop).
    pub concurrency: usize,
    /// Excluded from the figure: connections open, caches and the page cache warm.
    pub warmup: Duration,
    /// The measured window.
    pub measure: Duration,
    /// Hard cap on requests sent, so a loop stops by count even if the clock misbehaves.
    pub max_requests: u64,
    /// Makes idempotency keys unique across scenarios sharing one store.
    pub key_prefix: String,
}

/// What a closed-loop run saw.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// 2xx requests completed inside the measured window.
    pub measured_ok_requests: u64,
    /// Events acknowledged by those requests (= requests for single events).
    pub measured_ok_events: u64,
    /// Non-2xx answers and transport failures inside the measured window.
    pub measured_errors: u64,
    /// Events acknowledged over the whole run, warm-up included: what the store must hold.
    pub total_ok_events: u64,
    /// Failures over the whole run.
    pub total_errors: u64,
    /// Requests answered over the whole run (2xx or not), for CPU per request.
    pub total_requests: u64,
    /// Length of the measured window.
    pub window: Duration,
    /// One failure, to tell the reader what went wrong.
    pub first_error: Option<String>,
}

impl Outcome {
    /// Acknowledged events per second in the measured window.
    pub fn events_per_second(&self) -> f64 {
        self.measured_ok_events as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

/// A fast, seedable generator; the load loop must not spend its CPU on randomness.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// The id of bench account `index`; every store and baseline uses the same ids.
pub fn account_id(index: usize) -> String {
    format!("acct_{index:07}")
}

/// The client all scenarios use.
pub fn client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        // Room for every open-loop request in flight: a connection dropped when the idle
        // pool is full is a connect and a close per request later, CPU the figures would
        // wrongly charge to the server.
        .pool_max_idle_per_host(concurrency.max(OPEN_LOOP_MAX_IN_FLIGHT))
        .tcp_nodelay(true)
        // Generous: a slow answer is a slow figure, not an error to retry.
        .timeout(Duration::from_secs(60))
        .build()?)
}

#[derive(Deserialize)]
struct BatchBody {
    results: Vec<Slot>,
}

#[derive(Deserialize)]
struct Slot {
    /// `"usage"` for a charge; absent in an error slot.
    object: Option<String>,
}

struct Request {
    url: String,
    body: String,
}

fn build(spec: &Spec, rng: &mut SplitMix, sequence: u64) -> Request {
    let pick = |rng: &mut SplitMix| match spec.accounts {
        Accounts::Uniform(n) => account_id(rng.below(n)),
        Accounts::Hot => account_id(0),
    };
    match spec.shape {
        Shape::Single => Request {
            url: format!("{}/v1/accounts/{}/usage", spec.base, pick(rng)),
            body: format!(
                r#"{{"action":"api","quantity":1,"idempotency_key":"{}-{sequence}"}}"#,
                spec.key_prefix
            ),
        },
        Shape::Batch(size) => {
            let mut body = String::with_capacity(size * 100 + 16);
            body.push_str(r#"{"events":["#);
            for event in 0..size {
                if event > 0 {
                    body.push(',');
                }
                body.push_str(&format!(
                    r#"{{"account_id":"{}","action":"api","quantity":1,"idempotency_key":"{}-{sequence}-{event}"}}"#,
                    pick(rng),
                    spec.key_prefix
                ));
            }
            body.push_str("]}");
            Request {
                url: format!("{}/v1/usage/batch", spec.base),
                body,
            }
        }
    }
}

/// Sends one request; `Ok(events acknowledged)` for a 2xx answer.
async fn send(client: &reqwest::Client, spec: &Spec, request: Request) -> Result<u64, String> {
    let response = client
        .post(&request.url)
        .bearer_auth(&spec.token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(request.body)
        .send()
        .await
        .map_err(|error| format!("transport: {error}"))?;
    let status = response.status();
    // Reading the whole body keeps the connection reusable (keep-alive).
    let body = response
        .bytes()
        .await
        .map_err(|error| format!("reading body: {error}"))?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    match spec.shape {
        Shape::Single => Ok(1),
        Shape::Batch(_) => {
            let parsed: BatchBody =
                serde_json::from_slice(&body).map_err(|error| format!("batch body: {error}"))?;
            Ok(parsed
                .results
                .iter()
                .filter(|slot| slot.object.as_deref() == Some("usage"))
                .count() as u64)
        }
    }
}

#[derive(Default)]
struct Tally {
    requests: u64,
    ok_requests: u64,
    ok_events: u64,
    errors: u64,
    total_events: u64,
    total_errors: u64,
    first_error: Option<String>,
}

/// Closed loop: `concurrency` tasks each send, wait, send again, until the
/// window closes or the request cap is reached. Completions inside the
/// window count; requests still in flight when it closes are awaited (so the
/// store totals are exact) but not counted in the rate.
pub async fn closed_loop(client: &reqwest::Client, spec: &Spec) -> Outcome {
    let start = Instant::now();
    let window_start = start + spec.warmup;
    let window_end = window_start + spec.measure;
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for task in 0..spec.concurrency.max(1) {
        let client = client.clone();
        let spec = spec.clone();
        let issued = issued.clone();
        tasks.spawn(async move {
            let mut rng = SplitMix::new(0x5eed_u64.wrapping_add(task as u64).wrapping_mul(0x1234_5679));
            let mut tally = Tally::default();
            loop {
                if Instant::now() >= window_end {
                    break;
                }
                let sequence = issued.fetch_add(1, Ordering::Relaxed);
                if sequence >= spec.max_requests {
                    break;
                }
                let request = build(&spec, &mut rng, sequence);
                let result = send(&client, &spec, request).await;
                let done = Instant::now();
                tally.requests += 1;
                let measured = done >= window_start && done < window_end;
                match result {
                    Ok(events) => {
                        tally.total_events += events;
                        if measured {
                            tally.ok_requests += 1;
                            tally.ok_events += events;
                        }
                    }
                    Err(error) => {
                        tally.total_errors += 1;
                        if measured {
                            tally.errors += 1;
                        }
                        tally.first_error.get_or_insert(error);
                    }
                }
            }
            tally
        });
    }
    let mut outcome = Outcome {
        window: spec.measure,
        ..Outcome::default()
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(tally) => {
                outcome.total_requests += tally.requests;
                outcome.measured_ok_requests += tally.ok_requests;
                outcome.measured_ok_events += tally.ok_events;
                outcome.measured_errors += tally.errors;
                outcome.total_ok_events += tally.total_events;
                outcome.total_errors += tally.total_errors;
                if outcome.first_error.is_none() {
                    outcome.first_error = tally.first_error;
                }
            }
            Err(error) => {
                outcome.total_errors += 1;
                outcome
                    .first_error
                    .get_or_insert(format!("load task failed: {error}"));
            }
        }
    }
    // If the cap stopped the run before the window closed, the window was shorter.
    let ended = Instant::now().min(window_end);
    if ended < window_end && ended > window_start {
        outcome.window = ended - window_start;
    }
    outcome
}

/// What an open-loop run saw.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    /// Requests per second the schedule asked for.
    pub offered_rate: f64,
    /// Measured 2xx answers, sorted latencies in microseconds.
    pub sorted_micros: Vec<u64>,
    /// Failures in the measured part (including requests never sent because too many were in flight).
    pub errors: u64,
    /// Events acknowledged over the whole run (warm-up included).
    pub total_ok_events: u64,
    /// Requests sent over the whole run.
    pub total_requests: u64,
    pub first_error: Option<String>,
}

impl Latency {
    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.sorted_micros.is_empty() {
            return None;
        }
        let rank = ((self.sorted_micros.len() as f64 * q).ceil() as usize).clamp(1, self.sorted_micros.len());
        Some(self.sorted_micros[rank - 1] as f64 / 1_000.0)
    }
}

/// What one open-loop request reports: whether it was due inside the
/// measured window, and its events and latency or its failure.
type Sample = (bool, Result<(u64, Duration), String>);

/// Most requests the open loop lets wait at once; past this the server is
/// not keeping up and further requests are counted as failures, not queued
/// without bound.
const OPEN_LOOP_MAX_IN_FLIGHT: usize = 8_192;

/// Open loop: request `i` is due at `start + i / rate` whatever happened to
/// earlier ones, and its latency is measured from when it was due, so a
/// stalled server is charged for the requests it delayed (no coordinated
/// omission). Requests due during the warm-up are not measured.
pub async fn open_loop(client: &reqwest::Client, spec: &Spec, rate: f64) -> Latency {
    let rate = rate.max(1.0);
    let start = Instant::now();
    let total = spec.warmup + spec.measure;
    let planned = ((total.as_secs_f64() * rate) as u64).min(spec.max_requests);
    let mut tasks: JoinSet<Sample> = JoinSet::new();
    let mut rng = SplitMix::new(0x0be1_a7e5);
    let mut result = Latency {
        offered_rate: rate,
        ..Latency::default()
    };
    let mut sent: u64 = 0;
    let collect = |joined: Result<Sample, tokio::task::JoinError>, result: &mut Latency| match joined {
        Ok((measured, Ok((events, latency)))) => {
            result.total_ok_events += events;
            if measured {
                result.sorted_micros.push(latency.as_micros() as u64);
            }
        }
        Ok((measured, Err(error))) => {
            if measured {
                result.errors += 1;
            }
            result.first_error.get_or_insert(error);
        }
        Err(error) => {
            result.errors += 1;
            result
                .first_error
                .get_or_insert(format!("latency task failed: {error}"));
        }
    };
    while sent < planned {
        let elapsed = start.elapsed();
        if elapsed >= total + Duration::from_secs(1) {
            // The schedule should have finished by now; stop by time as well as count.
            break;
        }
        let due = ((elapsed.as_secs_f64() * rate) as u64 + 1).min(planned);
        while sent < due {
            let scheduled = start + Duration::from_secs_f64(sent as f64 / rate);
            let measured = scheduled >= start + spec.warmup;
            if tasks.len() >= OPEN_LOOP_MAX_IN_FLIGHT {
                if measured {
                    result.errors += 1;
                }
                result
                    .first_error
                    .get_or_insert_with(|| "too many requests in flight; dropped".to_owned());
            } else {
                let request = build(spec, &mut rng, sent);
                let client = client.clone();
                let spec = spec.clone();
                tasks.spawn(async move {
                    let outcome = send(&client, &spec, request).await;
                    (measured, outcome.map(|events| (events, scheduled.elapsed())))
                });
            }
            sent += 1;
        }
        // Reap finished requests so the in-flight count stays honest.
        while let Some(joined) = tasks.try_join_next() {
            collect(joined, &mut result);
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    while let Some(joined) = tasks.join_next().await {
        collect(joined, &mut result);
    }
    result.total_requests = sent;
    result.sorted_micros.sort_unstable();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_rank() {
        let latency = Latency {
            sorted_micros: (1..=1_000).collect(),
            ..Latency::default()
        };
        assert_eq!(latency.quantile_ms(0.5), Some(0.5));
        assert_eq!(latency.quantile_ms(0.99), Some(0.99));
        assert_eq!(latency.quantile_ms(0.999), Some(0.999));
        assert_eq!(Latency::default().quantile_ms(0.5), None);
    }

    #[test]
    fn batch_bodies_have_unique_keys() {
        let spec = Spec {
            base: "http://127.0.0.1:1".to_owned(),
            token: "t".to_owned(),
            accounts: Accounts::Uniform(10),
            shape: Shape::Batch(3),
            concurrency: 1,
            warmup: Duration::ZERO,
            measure: Duration::ZERO,
            max_requests: 1,
            key_prefix: "k".to_owned(),
        };
        let request = build(&spec, &mut SplitMix::new(1), 7);
        let value: serde_json::Value = serde_json::from_str(&request.body).unwrap();
        let keys: Vec<&str> = value["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["idempotency_key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["k-7-0", "k-7-1", "k-7-2"]);
    }
}
