//! Per-process micro-batching of single usage charges. Charges that arrive while
//! earlier ones are being written share one transaction: their accounts are locked in
//! id order, each event is refused (leaving no trace) or written with no savepoint, each
//! account is updated once, and one COMMIT makes them all durable before any caller hears back.
//! Correct across processes for the same reasons as a single charge: the row locks and
//! the unique constraints are the database's, not this process's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, mpsc, oneshot};
use tollgate_core::UsageCommand;

use super::PgStore;
use crate::{Idempotent, StoreError, StoreResult, UsageRecord};

/// Most charges written in one transaction: bounds how long one batch holds its locks.
pub const MAX_CHARGES_PER_MICRO_BATCH: usize = 128;
/// Batches written at once by one process (each on its own pooled connection).
pub const MICRO_BATCH_WORKERS: usize = 4;
/// Charges that may wait for a worker before callers feel back-pressure.
const QUEUE_CAPACITY: usize = 4_096;

type Reply = oneshot::Sender<StoreResult<Idempotent<UsageRecord>>>;

struct PendingCharge {
    command: UsageCommand,
    reply: Reply,
}

/// The queue in front of the workers; they start with the first charge.
#[derive(Default)]
pub(super) struct UsageBatcher {
    queue: OnceLock<mpsc::Sender<PendingCharge>>,
    counts: Arc<BatchCounts>,
}

/// What the workers did, for operators (and for tests that batches do form).
#[derive(Default)]
pub(super) struct BatchCounts {
    transactions: AtomicU64,
    charges: AtomicU64,
}

impl UsageBatcher {
    /// Charges `command` in the next micro-batch; answers once that batch committed.
    pub(super) async fn charge(
        &self,
        store: &PgStore,
        command: UsageCommand,
    ) -> StoreResult<Idempotent<UsageRecord>> {
        let queue = self
            .queue
            .get_or_init(|| start_workers(store.without_batcher(), self.counts.clone()));
        let (reply, replied) = oneshot::channel();
        queue
            .send(PendingCharge { command, reply })
            .await
            .map_err(|_| StoreError::Unavailable)?;
        replied.await.map_err(|_| StoreError::Unavailable)?
    }

    /// Micro-batch transactions committed and the single charges they carried.
    pub(super) fn committed(&self) -> (u64, u64) {
        (
            self.counts.transactions.load(Ordering::Relaxed),
            self.counts.charges.load(Ordering::Relaxed),
        )
    }
}

/// The workers hold a store without a batcher of its own, so when the store that owns
/// the queue is dropped the queue closes and they stop.
fn start_workers(store: PgStore, counts: Arc<BatchCounts>) -> mpsc::Sender<PendingCharge> {
    let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let receiver = Arc::new(Mutex::new(receiver));
    let store = Arc::new(store);
    for _ in 0..MICRO_BATCH_WORKERS {
        tokio::spawn(work(store.clone(), receiver.clone(), counts.clone()));
    }
    queue
}

async fn work(
    store: Arc<PgStore>,
    receiver: Arc<Mutex<mpsc::Receiver<PendingCharge>>>,
    counts: Arc<BatchCounts>,
) {
    let mut batch: Vec<PendingCharge> = Vec::with_capacity(MAX_CHARGES_PER_MICRO_BATCH);
    loop {
        {
            // Whoever holds the receiver takes everything that queued up while the other
            // workers were writing: under load, batches grow by themselves.
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            batch.push(first);
            while batch.len() < MAX_CHARGES_PER_MICRO_BATCH {
                match receiver.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
        }
        let commands: Vec<UsageCommand> = batch.iter().map(|pending| pending.command.clone()).collect();
        match store.charge_in_one_transaction(&commands).await {
            Ok(results) => {
                debug_assert_eq!(results.len(), batch.len());
                counts.transactions.fetch_add(1, Ordering::Relaxed);
                counts.charges.fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::trace!(charges = batch.len(), "micro-batch committed");
                for (pending, result) in batch.drain(..).zip(results) {
                    // A caller that went away still has its charge: it was committed.
                    let _ = pending.reply.send(result);
                }
            }
            Err(error) => {
                // Nothing of the batch was committed; every caller may retry its key.
                let message = error.to_string();
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(StoreError::Database(message.clone())));
                }
            }
        }
    }
}
