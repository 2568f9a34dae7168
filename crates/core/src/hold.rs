//! The hold lifecycle: active → captured | voided | expired, nothing else.

use time::Duration;

use crate::cycle::Timestamp;

/// Shortest hold time-to-live.
pub const MIN_HOLD_TTL_SECONDS: i64 = 1;
/// Longest hold time-to-live (7 days): funds are never locked indefinitely.
pub const MAX_HOLD_TTL_SECONDS: i64 = 7 * 24 * 3600;

/// Where a hold is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldStatus {
    /// Funds reserved.
    Active,
    /// The real cost was charged; the rest released.
    Captured,
    /// Released without charge.
    Voided,
    /// Released because its time ran out.
    Expired,
}

impl HoldStatus {
    /// Stable code.
    pub const fn code(self) -> &'static str {
        match self {
            HoldStatus::Active => "active",
            HoldStatus::Captured => "captured",
            HoldStatus::Voided => "voided",
            HoldStatus::Expired => "expired",
        }
    }

    /// Parses [`HoldStatus::code`].
    pub fn parse(code: &str) -> Option<HoldStatus> {
        [
            HoldStatus::Active,
            HoldStatus::Captured,
            HoldStatus::Voided,
            HoldStatus::Expired,
        ]
        .into_iter()
        .find(|status| status.code() == code)
    }
}

/// What may happen to a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldEvent {
    /// Charge the real cost.
    Capture,
    /// Release without charge.
    Void,
    /// Release because the time ran out.
    Expire,
}

/// A transition that is not allowed from the hold's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the hold is {} and can no longer change", .status.code())]
pub struct HoldNotActive {
    /// The state it is in.
    pub status: HoldStatus,
}

/// The state after `event`, given the hold's status and expiry. A capture or
/// void that arrives after the expiry finds the hold expired.
pub fn transition(
    status: HoldStatus,
    expires_at: Timestamp,
    event: HoldEvent,
    now: Timestamp,
) -> Result<HoldStatus, HoldNotActive> {
    if status != HoldStatus::Active {
        return Err(HoldNotActive { status });
    }
    if now >= expires_at {
        return match event {
            HoldEvent::Expire => Ok(HoldStatus::Expired),
            HoldEvent::Capture | HoldEvent::Void => Err(HoldNotActive {
                status: HoldStatus::Expired,
            }),
        };
    }
    match event {
        HoldEvent::Capture => Ok(HoldStatus::Captured),
        HoldEvent::Void => Ok(HoldStatus::Voided),
        HoldEvent::Expire => Err(HoldNotActive { status }),
    }
}

/// A validated hold time-to-live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldTtl(Duration);

impl HoldTtl {
    /// Accepts 1 second to 7 days.
    pub fn from_seconds(seconds: i64) -> Option<HoldTtl> {
        (MIN_HOLD_TTL_SECONDS..=MAX_HOLD_TTL_SECONDS)
            .contains(&seconds)
            .then(|| HoldTtl(Duration::seconds(seconds)))
    }

    /// The duration.
    pub const fn duration(self) -> Duration {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn only_active_holds_move() {
        let expires = datetime!(2026-11-25 12:00 UTC);
        let before = datetime!(2026-11-25 11:59 UTC);
        let after = datetime!(2026-11-25 12:00 UTC);
        assert_eq!(
            transition(HoldStatus::Active, expires, HoldEvent::Capture, before),
            Ok(HoldStatus::Captured)
        );
        assert_eq!(
            transition(HoldStatus::Active, expires, HoldEvent::Void, before),
            Ok(HoldStatus::Voided)
        );
        assert!(transition(HoldStatus::Active, expires, HoldEvent::Expire, before).is_err());
        assert_eq!(
            transition(HoldStatus::Active, expires, HoldEvent::Expire, after),
            Ok(HoldStatus::Expired)
        );
        assert_eq!(
            transition(HoldStatus::Active, expires, HoldEvent::Capture, after),
            Err(HoldNotActive {
                status: HoldStatus::Expired
            })
        );
        for done in [HoldStatus::Captured, HoldStatus::Voided, HoldStatus::Expired] {
            for event in [HoldEvent::Capture, HoldEvent::Void, HoldEvent::Expire] {
                assert_eq!(
                    transition(done, expires, event, after),
                    Err(HoldNotActive { status: done })
                );
            }
        }
    }

    #[test]
    fn ttl_is_bounded() {
        assert!(HoldTtl::from_seconds(0).is_none());
        assert!(HoldTtl::from_seconds(900).is_some());
        assert!(HoldTtl::from_seconds(MAX_HOLD_TTL_SECONDS + 1).is_none());
    }
}
