//! Monthly billing cycles anchored on the account's creation day, and the
//! Spend & Save state that rolls over with them.

use time::{Date, Duration, Month, OffsetDateTime, Time};

use crate::money::{Micros, MoneyOverflow};
use crate::pricing::{PriceBook, TierBasis, TierIndex};

/// A point in time, always UTC.
pub type Timestamp = OffsetDateTime;

/// The day of month cycles start on (1–31); a 31st anchors on shorter
/// months' last day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CycleAnchor(u8);

impl CycleAnchor {
    /// The anchor of an account created at `created_at`.
    pub fn from_created_at(created_at: Timestamp) -> CycleAnchor {
        CycleAnchor(created_at.to_offset(time::UtcOffset::UTC).day())
    }

    /// The anchor day.
    pub const fn day(self) -> u8 {
        self.0
    }

    /// Midnight UTC of this anchor's day in a month, clamped to the month's end.
    fn start_in(self, year: i32, month: Month) -> Timestamp {
        let mut day = self.0;
        loop {
            if let Ok(date) = Date::from_calendar_date(year, month, day) {
                return date.with_time(Time::MIDNIGHT).assume_utc();
            }
            // Only days 29–31 can be missing from a month.
            debug_assert!(day > 28);
            day -= 1;
        }
    }
}

/// One billing cycle: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BillingCycle {
    /// First instant of the cycle.
    pub start: Timestamp,
    /// First instant of the next cycle.
    pub end: Timestamp,
}

fn shift_month(year: i32, month: Month, forward: bool) -> (i32, Month) {
    match (forward, month) {
        (true, Month::December) => (year + 1, Month::January),
        (false, Month::January) => (year - 1, Month::December),
        (true, month) => (year, month.next()),
        (false, month) => (year, month.previous()),
    }
}

impl BillingCycle {
    /// The cycle that contains `now`.
    pub fn containing(anchor: CycleAnchor, now: Timestamp) -> BillingCycle {
        let now = now.to_offset(time::UtcOffset::UTC);
        let (year, month) = (now.year(), now.month());
        let this_month = anchor.start_in(year, month);
        let cycle = if this_month <= now {
            let (next_year, next_month) = shift_month(year, month, true);
            BillingCycle {
                start: this_month,
                end: anchor.start_in(next_year, next_month),
            }
        } else {
            let (previous_year, previous_month) = shift_month(year, month, false);
            BillingCycle {
                start: anchor.start_in(previous_year, previous_month),
                end: this_month,
            }
        };
        debug_assert!(cycle.start <= now && now < cycle.end);
        cycle
    }

    /// The cycle right after this one.
    pub fn next(self, anchor: CycleAnchor) -> BillingCycle {
        BillingCycle::containing(anchor, self.end)
    }

    /// Length of the cycle.
    pub fn duration(self) -> Duration {
        self.end - self.start
    }
}

/// The spend and savings an account has accumulated, per cycle and lifetime.
/// Tiers are derived from it, never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpendState {
    /// Start of the cycle the `cycle_*` totals belong to.
    pub cycle_start: Timestamp,
    /// Usage charges in that cycle, net of usage refunds.
    pub cycle_spend: Micros,
    /// Usage charges in the cycle just before it (0 if that cycle was skipped).
    pub previous_cycle_spend: Micros,
    /// Usage charges over the account's life.
    pub lifetime_spend: Micros,
    /// List price minus price paid, this cycle.
    pub cycle_savings: Micros,
    /// List price minus price paid, lifetime.
    pub lifetime_savings: Micros,
}

/// The next tier and what is left to reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextTier {
    /// The tier.
    pub tier: TierIndex,
    /// Spend still needed (positive).
    pub spend_needed: Micros,
}

impl SpendState {
    /// A fresh account, created at `created_at`.
    pub fn new(anchor: CycleAnchor, created_at: Timestamp) -> SpendState {
        SpendState {
            cycle_start: BillingCycle::containing(anchor, created_at).start,
            cycle_spend: Micros::ZERO,
            previous_cycle_spend: Micros::ZERO,
            lifetime_spend: Micros::ZERO,
            cycle_savings: Micros::ZERO,
            lifetime_savings: Micros::ZERO,
        }
    }

    /// The cycle the totals belong to.
    pub fn cycle(&self, anchor: CycleAnchor) -> BillingCycle {
        BillingCycle::containing(anchor, self.cycle_start)
    }

    /// Moves the totals into the cycle containing `now`. The cycle just ended
    /// becomes the previous one (its tier is retained for one cycle); a gap of
    /// more than one cycle retains nothing. Never rolls backwards.
    pub fn rolled_to(self, anchor: CycleAnchor, now: Timestamp) -> SpendState {
        let stored = self.cycle(anchor);
        if now < stored.end {
            return self;
        }
        let current = BillingCycle::containing(anchor, now);
        let previous_cycle_spend = if current.start == stored.end {
            self.cycle_spend
        } else {
            Micros::ZERO
        };
        SpendState {
            cycle_start: current.start,
            cycle_spend: Micros::ZERO,
            previous_cycle_spend,
            cycle_savings: Micros::ZERO,
            ..self
        }
    }

    /// The tier that prices the next charge.
    pub fn current_tier(&self, book: &PriceBook, basis: TierBasis) -> TierIndex {
        match basis {
            TierBasis::Cycle => book
                .tier_for_spend(self.cycle_spend)
                .max(book.tier_for_spend(self.previous_cycle_spend)),
            TierBasis::Lifetime => book.tier_for_spend(self.lifetime_spend),
        }
    }

    /// The next tier above the current one and the spend left to reach it.
    pub fn next_tier(&self, book: &PriceBook, basis: TierBasis) -> Option<NextTier> {
        let next = book.next_tier(self.current_tier(book, basis))?;
        let counted = match basis {
            TierBasis::Cycle => self.cycle_spend,
            TierBasis::Lifetime => self.lifetime_spend,
        };
        let spend_needed = book.tier(next).min_spend.checked_sub(counted).ok()?;
        debug_assert!(spend_needed.is_positive());
        Some(NextTier {
            tier: next,
            spend_needed,
        })
    }

    /// Adds a usage charge (or, negative, a usage refund) to every total.
    pub fn record_charge(&mut self, amount: Micros, savings: Micros) -> Result<(), MoneyOverflow> {
        let updated = SpendState {
            cycle_spend: self.cycle_spend.checked_add(amount)?,
            lifetime_spend: self.lifetime_spend.checked_add(amount)?,
            cycle_savings: self.cycle_savings.checked_add(savings)?,
            lifetime_savings: self.lifetime_savings.checked_add(savings)?,
            ..*self
        };
        *self = updated;
        Ok(())
    }
}

/// When `spend_needed` more will have been spent at this cycle's pace so far,
/// or `None` when that falls after the cycle ends (or nothing was spent yet).
pub fn project_unlock(
    cycle: BillingCycle,
    cycle_spend: Micros,
    spend_needed: Micros,
    now: Timestamp,
) -> Option<Timestamp> {
    if !cycle_spend.is_positive() || !spend_needed.is_positive() || now < cycle.start {
        return None;
    }
    let elapsed_seconds = i128::from((now - cycle.start).whole_seconds().max(1));
    let eta_seconds = i128::from(spend_needed.get()) * elapsed_seconds / i128::from(cycle_spend.get());
    let eta = now.checked_add(Duration::seconds(i64::try_from(eta_seconds).ok()?))?;
    (eta < cycle.end).then_some(eta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn cycles_anchor_on_the_creation_day() {
        let anchor = CycleAnchor::from_created_at(datetime!(2026-01-15 10:30 UTC));
        let cycle = BillingCycle::containing(anchor, datetime!(2026-02-20 08:00 UTC));
        assert_eq!(cycle.start, datetime!(2026-02-15 0:00 UTC));
        assert_eq!(cycle.end, datetime!(2026-03-15 0:00 UTC));
        let cycle = BillingCycle::containing(anchor, datetime!(2026-02-14 23:59 UTC));
        assert_eq!(cycle.start, datetime!(2026-01-15 0:00 UTC));
        let cycle = BillingCycle::containing(anchor, datetime!(2026-12-31 00:00 UTC));
        assert_eq!(cycle.end, datetime!(2027-01-15 0:00 UTC));
    }

    #[test]
    fn the_31st_anchors_on_the_months_last_day() {
        let anchor = CycleAnchor::from_created_at(datetime!(2026-01-31 12:00 UTC));
        let february = BillingCycle::containing(anchor, datetime!(2026-02-28 01:00 UTC));
        assert_eq!(february.start, datetime!(2026-02-28 0:00 UTC));
        assert_eq!(february.end, datetime!(2026-03-31 0:00 UTC));
        let leap = BillingCycle::containing(anchor, datetime!(2028-02-29 00:00 UTC));
        assert_eq!(leap.start, datetime!(2028-02-29 0:00 UTC));
        let april = BillingCycle::containing(anchor, datetime!(2026-04-30 00:00 UTC));
        assert_eq!(april.start, datetime!(2026-04-30 0:00 UTC));
        assert_eq!(april.end, datetime!(2026-05-31 0:00 UTC));
        assert_eq!(april.next(anchor).start, datetime!(2026-05-31 0:00 UTC));
    }

    #[test]
    fn rollover_retains_one_cycle() {
        let book = crate::pricing::default_price_book();
        let created = datetime!(2026-01-10 09:00 UTC);
        let anchor = CycleAnchor::from_created_at(created);
        let mut state = SpendState::new(anchor, created);
        state
            .record_charge(Micros::from_dollars(600).unwrap(), Micros::ZERO)
            .unwrap();
        let pro = state.current_tier(&book, TierBasis::Cycle);
        assert_eq!(book.tier(pro).id.as_str(), "pro");
        // Next cycle: retained.
        let next = state.rolled_to(anchor, datetime!(2026-02-11 00:00 UTC));
        assert_eq!(next.cycle_spend, Micros::ZERO);
        assert_eq!(next.current_tier(&book, TierBasis::Cycle), pro);
        assert_eq!(next.lifetime_spend, Micros::from_dollars(600).unwrap());
        // The cycle after, without spending again: back to Starter.
        let later = next.rolled_to(anchor, datetime!(2026-03-10 00:00 UTC));
        assert_eq!(later.current_tier(&book, TierBasis::Cycle), TierIndex::FIRST);
        // A skipped cycle retains nothing.
        let skipped = state.rolled_to(anchor, datetime!(2026-03-10 00:00 UTC));
        assert_eq!(skipped.previous_cycle_spend, Micros::ZERO);
        // Lifetime basis keeps the tier.
        assert_eq!(later.current_tier(&book, TierBasis::Lifetime), pro);
        // Never backwards.
        assert_eq!(next.rolled_to(anchor, created), next);
    }

    #[test]
    fn projection_follows_the_pace() {
        let cycle = BillingCycle {
            start: datetime!(2026-11-01 0:00 UTC),
            end: datetime!(2026-12-01 0:00 UTC),
        };
        let now = datetime!(2026-11-11 0:00 UTC);
        // $100 in 10 days; $50 more takes 5 days.
        let eta = project_unlock(
            cycle,
            Micros::from_dollars(100).unwrap(),
            Micros::from_dollars(50).unwrap(),
            now,
        );
        assert_eq!(eta, Some(datetime!(2026-11-16 0:00 UTC)));
        // $1,000 more would take 100 days: not this cycle.
        let never = project_unlock(
            cycle,
            Micros::from_dollars(100).unwrap(),
            Micros::from_dollars(1_000).unwrap(),
            now,
        );
        assert_eq!(never, None);
        assert_eq!(project_unlock(cycle, Micros::ZERO, Micros::new(1), now), None);
    }
}
