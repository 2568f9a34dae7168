//! Fault injection: misbehaving webhooks and failing or hanging API calls.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Webhook misbehaviour; applies to events as they leave the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookFaults {
    /// Wait this long before each delivery.
    pub delay_ms: u64,
    /// Deliver every event twice.
    pub duplicate: bool,
    /// Hold back the next N events, then deliver them in reverse order.
    pub reorder_next: u32,
    /// Silently skip the next N events (re-send them with redeliver or flush).
    pub drop_next: u32,
}

/// When an injected API fault strikes relative to the request's effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTiming {
    /// Nothing happens: the request fails (or hangs, then fails) before its effect.
    #[default]
    Before,
    /// The effect is applied and remembered for idempotent replays, then the call fails or hangs.
    After,
}

/// What an injected API fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ApiFaultKind {
    /// Answer `500 api_error`.
    Fail,
    /// Keep the connection silent for this many milliseconds.
    Hang {
        /// How long to hang.
        ms: u64,
    },
}

/// A fault for the next `count` API calls (optionally only those whose path starts with a prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFault {
    /// How many calls it affects.
    pub count: u32,
    /// Fail or hang.
    #[serde(flatten)]
    pub kind: ApiFaultKind,
    /// Before or after the effect.
    #[serde(default)]
    pub when: FaultTiming,
    /// Only calls whose path starts with this (e.g. `/v1/payment_intents`).
    #[serde(default)]
    pub path_prefix: Option<String>,
}

impl ApiFault {
    /// The next `count` calls fail with 500.
    pub fn fail(count: u32, when: FaultTiming) -> Self {
        ApiFault {
            count,
            kind: ApiFaultKind::Fail,
            when,
            path_prefix: None,
        }
    }

    /// The next `count` calls hang for `duration`.
    pub fn hang(count: u32, duration: Duration, when: FaultTiming) -> Self {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        ApiFault {
            count,
            kind: ApiFaultKind::Hang { ms },
            when,
            path_prefix: None,
        }
    }

    /// Restricts the fault to paths starting with `prefix`.
    pub fn on_path(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }
}

/// The most faults that may be queued at once; more are refused rather than grown without bound.
pub(crate) const MAX_QUEUED_FAULTS: usize = 100;

/// Takes one use of the first fault matching `path`, if any.
pub(crate) fn take_fault(
    faults: &mut std::collections::VecDeque<ApiFault>,
    path: &str,
) -> Option<(ApiFaultKind, FaultTiming)> {
    let idx = faults.iter().position(|f| {
        f.count > 0
            && f.path_prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix))
    })?;
    let f = faults.get_mut(idx)?;
    f.count -= 1;
    let taken = (f.kind, f.when);
    if f.count == 0 {
        faults.remove(idx);
    }
    Some(taken)
}
