//! Time is passed in: the core never reads the wall clock.

use std::sync::atomic::{AtomicI64, Ordering};

use time::{Duration, OffsetDateTime};

use crate::cycle::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Now, in UTC.
    fn now(&self) -> Timestamp;
}

/// A clock that only moves when told: for tests and simulations.
#[derive(Debug)]
pub struct ManualClock {
    unix_micros: AtomicI64,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            unix_micros: AtomicI64::new(to_unix_micros(start)),
        }
    }

    /// Moves the clock forward (or back, for a negative duration).
    pub fn advance(&self, by: Duration) {
        let micros = i64::try_from(by.whole_microseconds()).unwrap_or(i64::MAX);
        self.unix_micros.fetch_add(micros, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, to: Timestamp) {
        self.unix_micros.store(to_unix_micros(to), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        from_unix_micros(self.unix_micros.load(Ordering::SeqCst))
    }
}

/// Microseconds since the Unix epoch (the storage form of timestamps).
pub fn to_unix_micros(at: Timestamp) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// Inverse of [`to_unix_micros`]; out-of-range values clamp to the epoch.
pub fn from_unix_micros(micros: i64) -> Timestamp {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
