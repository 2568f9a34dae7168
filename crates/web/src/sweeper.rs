//! Background housekeeping: releasing holds whose time ran out (they are also released
//! lazily when their account is next written to; the sweeper makes sure an idle account
//! gets its funds back too), and closing invoice periods that ended.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tollgate_store::{SharedStore, Store, StoreResult};

/// Holds released per store call: one bounded write transaction.
pub const SWEEP_BATCH: usize = 500;
/// Batches per sweep, so one sweep never monopolises the writer.
pub const MAX_SWEEP_ROUNDS: usize = 20;
/// Shortest interval between sweeps.
const MIN_INTERVAL_MS: u64 = 10;

/// Releases due holds in bounded batches; returns how many were released.
pub async fn sweep_expired_holds(store: &dyn Store) -> StoreResult<usize> {
    let mut released = 0;
    for _ in 0..MAX_SWEEP_ROUNDS {
        let batch = store.expire_holds(SWEEP_BATCH).await?;
        released += batch;
        if batch < SWEEP_BATCH {
            break;
        }
    }
    if released > 0 {
        crate::telemetry::holds_expired(released);
    }
    Ok(released)
}

/// Sweeps every `interval_ms` until the returned task is aborted.
pub fn spawn_hold_sweeper(store: SharedStore, interval_ms: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(MIN_INTERVAL_MS)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match sweep_expired_holds(store.as_ref()).await {
                Ok(0) => {}
                Ok(released) => tracing::debug!(released, "expired holds released"),
                // The next tick retries; a store that stays down shows in /healthz.
                Err(error) => tracing::warn!(%error, "hold sweep failed"),
            }
        }
    })
}

/// How often the invoice closer looks for periods that ended.
pub const INVOICE_CLOSE_INTERVAL_MS: u64 = 60_000;
/// Close passes per tick, so a backlog (a restart after a long stop) drains in bounded steps.
pub const MAX_INVOICE_CLOSE_ROUNDS: usize = 10;

/// Closes every invoice period that ended, in bounded batches; returns how many invoices
/// were written. Safe to run in every process at once: each period closes once.
pub async fn close_due_invoices(store: &dyn Store) -> StoreResult<usize> {
    let mut written = 0;
    for _ in 0..MAX_INVOICE_CLOSE_ROUNDS {
        let batch = store
            .close_due_invoices(tollgate_store::MAX_INVOICE_CLOSE_BATCH)
            .await?;
        written += batch.len();
        if batch.is_empty() {
            break;
        }
    }
    Ok(written)
}

/// Closes due invoice periods every `interval_ms` until the returned task is aborted.
pub fn spawn_invoice_closer(store: SharedStore, interval_ms: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(MIN_INTERVAL_MS)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match close_due_invoices(store.as_ref()).await {
                Ok(0) => {}
                Ok(written) => tracing::info!(written, "invoices closed"),
                Err(error) => tracing::warn!(%error, "invoice close failed"),
            }
        }
    })
}
