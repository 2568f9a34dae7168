//! Auto Top-Up: the worker that charges the saved card when a balance falls below its
//! threshold.
//!
//! The hot path records nothing extra: "a recharge is due" is a fact the store derives
//! (an enabled rule whose account's available balance is under the threshold, with no
//! recharge open and no cool-down running). Each process polls for it; starting a
//! recharge records the auto top-up under the account's lock, and the store's
//! one-open-recharge-per-account constraint makes a second start impossible, whatever
//! the number of processes. The charge's idempotency key derives from that record, so
//! a retry after any crash asks Stripe for the same charge, never a second one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tollgate_core::retry_delay_ms;
use tollgate_store::{AutoRechargeStart, TopupRecord};

use crate::{Billing, BillingError, BillingResult};

/// How often each process looks for due recharges.
pub const AUTO_RECHARGE_POLL_INTERVAL_MS: u64 = 200;
/// Most accounts one pass starts recharges for.
pub const AUTO_RECHARGE_BATCH: usize = 100;

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoRechargeReport {
    /// Recharges started in this pass.
    pub started: usize,
    /// Open recharges whose charge was (re)sent.
    pub charged: usize,
    /// Recharges that ended succeeded.
    pub succeeded: usize,
    /// Recharges that ended failed (declined, authentication required).
    pub failed: usize,
    /// Charges that could not reach the processor (retried with back-off).
    pub transient_errors: usize,
}

/// Transient-failure bookkeeping of one process: attempts and when to try again.
///
/// In memory on purpose: after a restart the count starts again, which only grants a
/// bounded number of extra attempts, each with the same idempotency key.
#[derive(Clone, Default)]
pub struct AutoRechargeWorker {
    retries: Arc<Mutex<HashMap<String, Retry>>>,
}

/// Back-off runs on the monotonic clock: it is about the processor's availability
/// in real time, not about billing time.
#[derive(Clone, Copy, Debug)]
struct Retry {
    attempts: u32,
    next_at: Instant,
}

impl AutoRechargeWorker {
    /// A worker with no history.
    pub fn new() -> AutoRechargeWorker {
        AutoRechargeWorker::default()
    }

    fn may_try(&self, topup_id: &str, now: Instant) -> bool {
        let retries = self.retries.lock().unwrap_or_else(PoisonError::into_inner);
        retries.get(topup_id).is_none_or(|retry| retry.next_at <= now)
    }

    /// Records a transient failure; false once the retries are used up (the recovery
    /// pass then takes over at its slower pace, still with the same key).
    fn failed_transiently(&self, topup_id: &str, now: Instant) -> bool {
        let mut retries = self.retries.lock().unwrap_or_else(PoisonError::into_inner);
        let retry = retries.entry(topup_id.to_owned()).or_insert(Retry {
            attempts: 0,
            next_at: now,
        });
        retry.attempts = retry.attempts.saturating_add(1);
        match retry_delay_ms(retry.attempts) {
            Some(delay_ms) => {
                retry.next_at = now + Duration::from_millis(delay_ms);
                true
            }
            None => {
                // Leave the next attempts to the recovery pass.
                retry.next_at = now + Duration::from_secs(3_600);
                false
            }
        }
    }

    fn forget(&self, topup_id: &str) {
        self.retries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(topup_id);
    }
}

impl Billing {
    /// One pass of the worker: resumes open recharges (after a crash, or a transient
    /// failure whose back-off ran out), then starts the due ones and charges them.
    pub async fn run_auto_recharges(&self, worker: &AutoRechargeWorker) -> BillingResult<AutoRechargeReport> {
        let mut report = AutoRechargeReport::default();
        let now = self.clock.now();
        for topup in self.store.open_auto_recharges(AUTO_RECHARGE_BATCH).await? {
            if worker.may_try(&topup.id, Instant::now()) {
                self.charge_recharge(worker, topup, &mut report).await;
            }
        }
        let due = self.store.due_auto_recharges(now, AUTO_RECHARGE_BATCH).await?;
        for account in due {
            match self
                .store
                .begin_auto_recharge(&account, self.settings.topup_limits)
                .await
            {
                Ok(AutoRechargeStart::Started(topup)) => {
                    report.started += 1;
                    tracing::info!(account = %account, topup = %topup.id, amount = %topup.amount, "auto top-up started");
                    self.charge_recharge(worker, *topup, &mut report).await;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(account = %account, %error, "could not start an auto top-up"),
            }
        }
        Ok(report)
    }

    async fn charge_recharge(
        &self,
        worker: &AutoRechargeWorker,
        topup: TopupRecord,
        report: &mut AutoRechargeReport,
    ) {
        report.charged += 1;
        let id = topup.id.clone();
        let account = topup.account.clone();
        match self.charge_saved_card(topup).await {
            Ok(settled) if settled.status == tollgate_core::TopupStatus::Succeeded => {
                worker.forget(&id);
                report.succeeded += 1;
                tracing::info!(account = %account, topup = %id, "auto top-up succeeded");
            }
            Ok(settled)
                if !settled.status.is_open()
                    || settled.status == tollgate_core::TopupStatus::RequiresAction =>
            {
                worker.forget(&id);
                if settled.status == tollgate_core::TopupStatus::RequiresAction {
                    // Nobody is there to authenticate an off-session charge: the rule asks
                    // the customer for action (settled above), and this payment is closed so
                    // that it does not hold the account's one open recharge forever.
                    if let Err(error) = self
                        .store
                        .settle_topup(&id, tollgate_core::TopupOutcome::Canceled)
                        .await
                    {
                        tracing::warn!(topup = %id, %error, "could not close an auto top-up that needs authentication");
                    }
                }
                report.failed += 1;
                tracing::warn!(
                    account = %account,
                    topup = %id,
                    code = settled.failure_code.as_deref().unwrap_or("unknown"),
                    "auto top-up failed; the rule stops until the card or settings change or the cool-down ends"
                );
            }
            // Processing: the webhook or the next pass learns the outcome.
            Ok(_) => {}
            Err(BillingError::Payments(error)) if error.is_transient() => {
                report.transient_errors += 1;
                let retrying = worker.failed_transiently(&id, Instant::now());
                tracing::warn!(account = %account, topup = %id, %error, retrying, "auto top-up charge did not reach the processor");
            }
            Err(error) => {
                report.transient_errors += 1;
                worker.failed_transiently(&id, Instant::now());
                tracing::error!(account = %account, topup = %id, %error, "auto top-up charge failed unexpectedly; retried later with the same key");
            }
        }
    }

    /// Runs the worker every `interval_ms` until the task is aborted.
    pub fn spawn_auto_recharge_worker(&self, interval_ms: u64) -> tokio::task::JoinHandle<()> {
        let billing = self.clone();
        let worker = AutoRechargeWorker::new();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(10)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(error) = billing.run_auto_recharges(&worker).await {
                    tracing::warn!(%error, "auto top-up pass failed; retried next tick");
                }
            }
        })
    }
}
