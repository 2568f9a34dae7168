//! Property tests of the pure core: pricing, tiers, cycles, money and the
//! ledger constructors, for the default price book and for random valid ones.
//!
//! Expected values are computed here by deliberately naive reference code
//! (linear scans, explicit remainders) rather than by calling back into the
//! functions under test, so a bug in one cannot hide behind the other.

use std::collections::BTreeMap;

use proptest::prelude::*;
use time::{Date, Duration, Month, OffsetDateTime, Time};
use tollgate_core::ledger::{LedgerAccount, TransactionKind};
use tollgate_core::pricing::default_price_book;
use tollgate_core::{
    AccountId, AccountPlan, ActionId, ActionSpec, BillingCycle, CycleAnchor, DiscountPercent,
    JournalTransaction, Micros, PriceBook, PriceSource, PricingError, Quantity, SpendState, TierBasis,
    TierId, TierIndex, TierSpec,
};

// ---------------------------------------------------------------------------
// Reference arithmetic
// ---------------------------------------------------------------------------

/// `list × (100 − d) / 100`, rounded half up, via an explicit remainder.
fn reference_discount(list: i64, percent: u8) -> i64 {
    let numerator = i128::from(list) * i128::from(100 - percent);
    let (quotient, remainder) = (numerator / 100, numerator % 100);
    let rounded = if remainder >= 50 { quotient + 1 } else { quotient };
    i64::try_from(rounded).unwrap()
}

/// A price book plus the plain data it was built from, for reference checks.
#[derive(Clone, Debug)]
struct Book {
    book: PriceBook,
    lists: Vec<i64>,
    thresholds: Vec<i64>,
    discounts: Vec<u8>,
    /// Per tier: action position → override price.
    overrides: Vec<BTreeMap<usize, i64>>,
}

impl Book {
    /// Highest tier whose threshold `spend` reached, by scanning every tier.
    fn reference_tier(&self, spend: i64) -> usize {
        let mut reached = 0;
        for (index, threshold) in self.thresholds.iter().enumerate() {
            if spend >= *threshold {
                reached = index;
            }
        }
        reached
    }

    fn reference_tier_price(&self, action: usize, tier: usize) -> i64 {
        match self.overrides[tier].get(&action) {
            Some(price) => *price,
            None => reference_discount(self.lists[action], self.discounts[tier]),
        }
    }

    fn action_id(&self, action: usize) -> ActionId {
        self.book.actions()[action].id.clone()
    }

    fn tier_index(&self, tier: usize) -> TierIndex {
        self.book.tier_index(&self.book.tiers()[tier].id).unwrap()
    }

    fn from_price_book(book: PriceBook) -> Book {
        let lists = book.actions().iter().map(|a| a.list_price.get()).collect();
        let thresholds = book.tiers().iter().map(|t| t.min_spend.get()).collect();
        let discounts = book.tiers().iter().map(|t| t.discount.get()).collect();
        let overrides = book
            .tiers()
            .iter()
            .map(|tier| {
                tier.price_overrides
                    .iter()
                    .map(|(action, price)| {
                        let position = book.actions().iter().position(|a| &a.id == action).unwrap();
                        (position, price.get())
                    })
                    .collect()
            })
            .collect();
        Book {
            book,
            lists,
            thresholds,
            discounts,
            overrides,
        }
    }
}

/// Raw material of one random tier: threshold step, discount step, and per
/// action an optional override expressed as a fraction (‰) of the price of
/// the tier below, so prices never rise.
type RawTier = (i64, u8, Vec<Option<u16>>);

fn build_book(lists: Vec<i64>, raw_tiers: Vec<RawTier>) -> Book {
    let actions: Vec<ActionSpec> = lists
        .iter()
        .enumerate()
        .map(|(index, list)| ActionSpec {
            id: ActionId::parse(&format!("action_{index}")).unwrap(),
            name: format!("Action {index}"),
            unit: "unit".to_owned(),
            list_price: Micros::new(*list),
        })
        .collect();
    let mut thresholds: Vec<i64> = Vec::new();
    let mut discounts: Vec<u8> = Vec::new();
    let mut overrides: Vec<BTreeMap<usize, i64>> = Vec::new();
    // The price each action had in the tier below (list price below tier 0).
    let mut previous_prices = lists.clone();
    for (tier, (step, discount_step, raw_overrides)) in raw_tiers.into_iter().enumerate() {
        if tier == 0 {
            thresholds.push(0);
            discounts.push(discount_step.min(100));
        } else {
            thresholds.push(thresholds[tier - 1] + step);
            discounts.push((discounts[tier - 1] + discount_step).min(100));
        }
        overrides.push(BTreeMap::new());
        for (action, list) in lists.iter().enumerate() {
            let discounted = reference_discount(*list, discounts[tier]);
            let ceiling = previous_prices[action];
            let price = match raw_overrides.get(action).copied().flatten() {
                Some(per_mille) => {
                    let price = ceiling * i64::from(per_mille) / 1000;
                    overrides[tier].insert(action, price);
                    price
                }
                // Without an override the discounted list price must not rise
                // above the tier below; when it would, pin it with an override.
                None if discounted > ceiling => {
                    overrides[tier].insert(action, ceiling);
                    ceiling
                }
                None => discounted,
            };
            previous_prices[action] = price;
        }
    }
    let tiers: Vec<TierSpec> = thresholds
        .iter()
        .enumerate()
        .map(|(index, threshold)| TierSpec {
            id: TierId::parse(&format!("tier_{index}")).unwrap(),
            name: format!("Tier {index}"),
            min_spend: Micros::new(*threshold),
            discount: DiscountPercent::new(discounts[index]).unwrap(),
            price_overrides: overrides[index]
                .iter()
                .map(|(action, price)| (actions[*action].id.clone(), Micros::new(*price)))
                .collect(),
        })
        .collect();
    let book = PriceBook::new(actions, tiers).expect("a generated book is valid");
    Book {
        book,
        lists,
        thresholds,
        discounts,
        overrides,
    }
}

fn arb_list_price() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0_i64), 1_i64..=1_000, 1_i64..=100_000, 1_i64..=10_000_000,]
}

fn arb_random_book() -> impl Strategy<Value = Book> {
    (1_usize..=5)
        .prop_flat_map(|actions| {
            (
                prop::collection::vec(arb_list_price(), actions),
                prop::collection::vec(
                    (
                        1_i64..=1_000_000_000,
                        0_u8..=40,
                        prop::collection::vec(prop::option::weighted(0.3, 0_u16..=1000), actions),
                    ),
                    1..=7,
                ),
            )
        })
        .prop_map(|(lists, tiers)| build_book(lists, tiers))
}

fn arb_book() -> impl Strategy<Value = Book> {
    prop_oneof![
        1 => Just(Book::from_price_book(default_price_book())),
        3 => arb_random_book(),
    ]
}

/// A spend anywhere around the book's thresholds, refunds (negative) included.
fn arb_spend() -> impl Strategy<Value = i64> {
    prop_oneof![
        -1_000_000_i64..=0,
        0_i64..=200_000_000,
        0_i64..=100_000_000_000,
        0_i64..=8_000_000_000_000,
    ]
}

fn arb_quantity() -> impl Strategy<Value = u64> {
    prop_oneof![
        1_u64..=100,
        1_u64..=1_000_000,
        Just(tollgate_core::ids::MAX_QUANTITY)
    ]
}

// ---------------------------------------------------------------------------
// Tiers and pricing
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn tier_is_monotonic_in_spend(book in arb_book(), a in arb_spend(), b in arb_spend()) {
        let (low, high) = (a.min(b), a.max(b));
        let low_tier = book.book.tier_for_spend(Micros::new(low));
        let high_tier = book.book.tier_for_spend(Micros::new(high));
        prop_assert!(low_tier <= high_tier);
        prop_assert_eq!(low_tier.get(), book.reference_tier(low));
        prop_assert_eq!(high_tier.get(), book.reference_tier(high));
    }

    #[test]
    fn thresholds_switch_tiers_exactly(book in arb_book()) {
        for (index, threshold) in book.thresholds.iter().enumerate() {
            prop_assert_eq!(book.book.tier_for_spend(Micros::new(*threshold)).get(), index);
            if index > 0 {
                prop_assert_eq!(book.book.tier_for_spend(Micros::new(threshold - 1)).get(), index - 1);
            }
        }
    }

    /// Quote at the current tier, record the charge, and only the next quote
    /// sees the new tier: the charge that crosses is priced at the old one.
    #[test]
    fn the_crossing_charge_is_priced_at_the_old_tier(
        book in arb_book(),
        lifetime in any::<bool>(),
        start_spend in 0_i64..=60_000_000_000,
        charges in prop::collection::vec((0_usize..5, 1_u64..=2_000_000), 1..40),
    ) {
        let basis = if lifetime { TierBasis::Lifetime } else { TierBasis::Cycle };
        let created = OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap();
        let anchor = CycleAnchor::from_created_at(created);
        let mut state = SpendState::new(anchor, created);
        state.record_charge(Micros::new(start_spend), Micros::ZERO).unwrap();
        let plan = AccountPlan::default();
        let mut crossings = 0;
        for (action, quantity) in charges {
            let action = action % book.lists.len();
            let before = state.current_tier(&book.book, basis);
            let expected_before = book.reference_tier(match basis {
                TierBasis::Cycle => state.cycle_spend.get().max(state.previous_cycle_spend.get()),
                TierBasis::Lifetime => state.lifetime_spend.get(),
            });
            prop_assert_eq!(before.get(), expected_before);
            let quote = book
                .book
                .quote(&book.action_id(action), Quantity::new(quantity).unwrap(), before, &plan)
                .unwrap();
            prop_assert_eq!(quote.tier, before);
            prop_assert_eq!(quote.unit_price.get(), book.reference_tier_price(action, before.get()));
            state.record_charge(quote.amount, quote.savings).unwrap();
            let after = state.current_tier(&book.book, basis);
            prop_assert!(after >= before, "a charge never lowers the tier");
            if after > before {
                crossings += 1;
                // The next quote uses the new tier.
                let next = book
                    .book
                    .quote(&book.action_id(action), Quantity::ONE, after, &plan)
                    .unwrap();
                prop_assert_eq!(next.unit_price.get(), book.reference_tier_price(action, after.get()));
            }
        }
        prop_assert!(crossings < book.thresholds.len());
    }

    #[test]
    fn savings_are_list_minus_paid_and_never_negative(
        book in arb_book(),
        tier in 0_usize..8,
        action in 0_usize..5,
        quantity in arb_quantity(),
        personal in prop::option::of(0_u8..=100),
        custom in prop::option::weighted(0.2, 0_i64..=200_000),
    ) {
        let tier = book.tier_index(tier % book.thresholds.len());
        let action = action % book.lists.len();
        let mut plan = AccountPlan {
            personal_discount: personal.map(|p| DiscountPercent::new(p).unwrap()),
            custom_prices: BTreeMap::new(),
        };
        if let Some(custom) = custom {
            plan.custom_prices.insert(book.action_id(action), Micros::new(custom));
        }
        let quantity = Quantity::new(quantity).unwrap();
        match book.book.quote(&book.action_id(action), quantity, tier, &plan) {
            Ok(quote) => {
                prop_assert!(!quote.savings.is_negative());
                let list_minus_paid = quote.list_amount.get() - quote.amount.get();
                prop_assert_eq!(quote.savings.get(), list_minus_paid.max(0));
                prop_assert_eq!(quote.amount.get(), i64::try_from(i128::from(quote.unit_price.get()) * i128::from(quantity.get())).unwrap());
                prop_assert_eq!(quote.list_amount.get(), book.lists[action] * i64::try_from(quantity.get()).unwrap());
                if custom.is_none() {
                    // Without a custom price nothing is ever paid above list.
                    prop_assert!(quote.unit_price <= quote.unit_list_price);
                    prop_assert_eq!(quote.savings.get(), list_minus_paid);
                }
            }
            Err(PricingError::Overflow) => {
                let list = i128::from(book.lists[action]) * i128::from(quantity.get());
                let paid = i128::from(book.book.unit_price(&book.action_id(action), tier, &plan).unwrap().paid.get())
                    * i128::from(quantity.get());
                prop_assert!(list > i128::from(i64::MAX) || paid > i128::from(i64::MAX));
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn discounts_round_half_up_and_never_exceed_list(list in 0_i64..=i64::MAX / 100, percent in 0_u8..=100) {
        let paid = DiscountPercent::new(percent).unwrap().apply(Micros::new(list)).get();
        prop_assert_eq!(paid, reference_discount(list, percent));
        prop_assert!(paid <= list);
        prop_assert!(paid >= 0);
        // Within half a micro-dollar of the exact value, ties going up.
        let exact_times_100 = i128::from(list) * i128::from(100 - percent);
        let error = i128::from(paid) * 100 - exact_times_100;
        prop_assert!((-49..=50).contains(&error), "error {error}");
    }

    /// Custom price wins; otherwise the lower of the tier's price and the
    /// personal-discount price.
    #[test]
    fn plan_precedence(
        book in arb_book(),
        tier in 0_usize..8,
        action in 0_usize..5,
        personal in prop::option::of(0_u8..=100),
        custom in prop::option::weighted(0.3, 0_i64..=20_000_000),
    ) {
        let tier_position = tier % book.thresholds.len();
        let tier = book.tier_index(tier_position);
        let action = action % book.lists.len();
        let mut plan = AccountPlan {
            personal_discount: personal.map(|p| DiscountPercent::new(p).unwrap()),
            custom_prices: BTreeMap::new(),
        };
        if let Some(custom) = custom {
            plan.custom_prices.insert(book.action_id(action), Micros::new(custom));
        }
        let unit = book.book.unit_price(&book.action_id(action), tier, &plan).unwrap();
        prop_assert_eq!(unit.list.get(), book.lists[action]);
        let tier_price = book.reference_tier_price(action, tier_position);
        let (expected_paid, expected_source) = match (custom, personal) {
            (Some(custom), _) => (custom, PriceSource::Custom),
            (None, Some(personal)) if reference_discount(book.lists[action], personal) < tier_price => {
                (reference_discount(book.lists[action], personal), PriceSource::PersonalDiscount)
            }
            (None, _) => (tier_price, PriceSource::Tier),
        };
        prop_assert_eq!(unit.paid.get(), expected_paid);
        prop_assert_eq!(unit.source, expected_source);
        if custom.is_none() {
            let personal_price = personal.map_or(i64::MAX, |p| reference_discount(book.lists[action], p));
            prop_assert_eq!(unit.paid.get(), tier_price.min(personal_price));
        }
    }

    /// Higher tiers never charge more, for every action.
    #[test]
    fn prices_never_rise_with_the_tier(book in arb_book()) {
        for action in 0..book.lists.len() {
            let mut ceiling = book.lists[action];
            for tier in 0..book.thresholds.len() {
                let price = book.book.tier_price(&book.action_id(action), book.tier_index(tier)).unwrap().get();
                prop_assert_eq!(price, book.reference_tier_price(action, tier));
                prop_assert!(price <= ceiling);
                ceiling = price;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Cycles and retention
// ---------------------------------------------------------------------------

/// 1970-01-01 … 2200-01-01, in microseconds.
const LAST_MICROS: i64 = 7_258_118_400 * 1_000_000;

fn at_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).unwrap()
}

fn anchor_of_day(day: u8) -> CycleAnchor {
    // January has 31 days, so every anchor day exists in it.
    let created = Date::from_calendar_date(2026, Month::January, day)
        .unwrap()
        .with_time(Time::from_hms(13, 7, 0).unwrap())
        .assume_utc();
    let anchor = CycleAnchor::from_created_at(created);
    assert_eq!(anchor.day(), day);
    anchor
}

fn days_in_month(year: i32, month: Month) -> u8 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        Month::February if leap => 29,
        Month::February => 28,
        Month::April | Month::June | Month::September | Month::November => 30,
        _ => 31,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn cycles_contain_now_and_tile_time(day in 1_u8..=31, now in 0_i64..LAST_MICROS) {
        let anchor = anchor_of_day(day);
        let now = at_micros(now);
        let mut cycle = BillingCycle::containing(anchor, now);
        prop_assert!(cycle.start <= now && now < cycle.end, "{cycle:?} misses {now}");
        for _ in 0..3 {
            prop_assert_eq!(cycle.start.time(), Time::MIDNIGHT);
            prop_assert_eq!(cycle.start.offset(), time::UtcOffset::UTC);
            // Anchor day, or the month's last day when the month is shorter.
            let expected_day = day.min(days_in_month(cycle.start.year(), cycle.start.month()));
            prop_assert_eq!(cycle.start.day(), expected_day);
            prop_assert!(cycle.duration() >= Duration::days(28) && cycle.duration() <= Duration::days(31));
            // The last instant of the cycle still belongs to it.
            prop_assert_eq!(BillingCycle::containing(anchor, cycle.end - Duration::microseconds(1)), cycle);
            prop_assert_eq!(BillingCycle::containing(anchor, cycle.start), cycle);
            let next = cycle.next(anchor);
            prop_assert_eq!(next.start, cycle.end, "gap or overlap after {:?}", cycle);
            cycle = next;
        }
    }

    /// After rolling into the next cycle, the tier earned by the cycle just
    /// ended is kept; a skipped cycle keeps nothing; lifetime totals survive.
    #[test]
    fn retention_keeps_the_tier_earned_in_the_previous_cycle(
        book in arb_book(),
        created in 0_i64..(LAST_MICROS - 400 * 86_400_000_000),
        charges in prop::collection::vec(0_i64..=20_000_000_000, 0..8),
        later_charges in prop::collection::vec(0_i64..=20_000_000_000, 0..4),
        into_next in 0.0_f64..1.0,
    ) {
        let created = at_micros(created);
        let anchor = CycleAnchor::from_created_at(created);
        let mut state = SpendState::new(anchor, created);
        for charge in &charges {
            state.record_charge(Micros::new(*charge), Micros::new(charge / 10)).unwrap();
        }
        let earned = book.reference_tier(state.cycle_spend.get());
        let tier_at_end = state.current_tier(&book.book, TierBasis::Cycle);
        prop_assert!(tier_at_end.get() >= earned);
        // Somewhere inside the next cycle.
        let next = state.cycle(anchor).next(anchor);
        let offset = (next.duration().whole_microseconds() as f64 * into_next) as i64;
        let now = next.start + Duration::microseconds(offset);
        let rolled = state.rolled_to(anchor, now);
        prop_assert_eq!(rolled.cycle_start, next.start);
        prop_assert_eq!(rolled.cycle_spend, Micros::ZERO);
        prop_assert_eq!(rolled.cycle_savings, Micros::ZERO);
        prop_assert_eq!(rolled.previous_cycle_spend, state.cycle_spend);
        prop_assert_eq!(rolled.lifetime_spend, state.lifetime_spend);
        prop_assert_eq!(rolled.lifetime_savings, state.lifetime_savings);
        let retained = rolled.current_tier(&book.book, TierBasis::Cycle);
        prop_assert!(retained.get() >= earned, "retention lowered {earned} to {}", retained.get());
        prop_assert_eq!(retained.get(), earned);
        // Spending more in the new cycle never drops below the retained tier.
        let mut spending = rolled;
        for charge in &later_charges {
            spending.record_charge(Micros::new(*charge), Micros::ZERO).unwrap();
            prop_assert!(spending.current_tier(&book.book, TierBasis::Cycle) >= retained);
        }
        // Rolling again within the same cycle changes nothing.
        prop_assert_eq!(rolled.rolled_to(anchor, now), rolled);
        prop_assert_eq!(rolled.rolled_to(anchor, created), rolled);
        // Skipping a whole cycle retains nothing.
        let skipped_to = next.next(anchor).start + Duration::microseconds(offset / 2);
        let skipped = state.rolled_to(anchor, skipped_to);
        prop_assert_eq!(skipped.previous_cycle_spend, Micros::ZERO);
        prop_assert_eq!(skipped.current_tier(&book.book, TierBasis::Cycle), TierIndex::FIRST);
        // Rolling in two hops equals rolling at once.
        prop_assert_eq!(rolled.rolled_to(anchor, skipped_to), skipped);
    }

    #[test]
    fn lifetime_tier_never_decreases(
        book in arb_book(),
        steps in prop::collection::vec((any::<bool>(), 0_i64..=30_000_000_000, 0_i64..=70), 1..40),
    ) {
        let created = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let anchor = CycleAnchor::from_created_at(created);
        let mut state = SpendState::new(anchor, created);
        let mut now = created;
        let mut tier = state.current_tier(&book.book, TierBasis::Lifetime);
        for (charge, amount, days) in steps {
            if charge {
                state.record_charge(Micros::new(amount), Micros::ZERO).unwrap();
            } else {
                now += Duration::days(days);
                state = state.rolled_to(anchor, now);
            }
            let after = state.current_tier(&book.book, TierBasis::Lifetime);
            prop_assert!(after >= tier);
            prop_assert_eq!(after.get(), book.reference_tier(state.lifetime_spend.get()));
            tier = after;
        }
    }
}

// ---------------------------------------------------------------------------
// Money
// ---------------------------------------------------------------------------

/// Does `text` match `-?\d+(\.\d{1,6})?` (ASCII digits)?
fn matches_money_grammar(text: &str) -> bool {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match unsigned.find('.') {
        Some(dot) => (&unsigned[..dot], Some(&unsigned[dot + 1..])),
        None => (unsigned, None),
    };
    let digits = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    digits(whole) && fraction.is_none_or(|fraction| digits(fraction) && fraction.len() <= 6)
}

/// The value of a string matching the grammar, in micro-dollars, if it fits.
fn reference_micros(text: &str) -> Option<i64> {
    let negative = text.starts_with('-');
    let unsigned = text.trim_start_matches('-');
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let mut value: i128 = 0;
    for digit in whole.chars() {
        value = value * 10 + i128::from(digit.to_digit(10)? as u8);
        if value > i128::from(i64::MAX) + 1 {
            return None;
        }
    }
    value *= 1_000_000;
    let padded = format!("{fraction:0<6}");
    value += padded.parse::<i128>().ok()?;
    i64::try_from(if negative { -value } else { value }).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn money_format_then_parse_round_trips(micros in any::<i64>()) {
        let amount = Micros::new(micros);
        let text = amount.to_string();
        prop_assert!(matches_money_grammar(&text), "{text} is not canonical");
        prop_assert_eq!(Micros::parse(&text), Ok(amount), "{}", text);
    }

    #[test]
    fn money_parse_accepts_exactly_the_grammar(text in "[-0-9.+e ,١]{0,12}") {
        let parsed = Micros::parse(&text);
        if matches_money_grammar(&text) {
            prop_assert_eq!(parsed.ok().map(Micros::get), reference_micros(&text), "{:?}", text);
        } else {
            prop_assert!(parsed.is_err(), "{text:?} parsed as {parsed:?}");
        }
    }

    #[test]
    fn money_parse_reads_valid_amounts_exactly(text in "-?[0-9]{1,20}(\\.[0-9]{1,7})?") {
        let parsed = Micros::parse(&text);
        if matches_money_grammar(&text) {
            prop_assert_eq!(parsed.ok().map(Micros::get), reference_micros(&text), "{:?}", text);
        } else {
            prop_assert!(parsed.is_err(), "{text:?} parsed as {parsed:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Journal transactions
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Movement {
    Usage(i64),
    Grant(i64),
    CardPayment(TransactionKind, i64),
    Clawback(TransactionKind, i64),
    HoldPlaced(i64),
    HoldCaptured { held: i64, cost: i64 },
    HoldReleased(i64),
}

fn arb_amount() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0_i64), 1_i64..=1_000, 0_i64..=1_000_000_000_000_000]
}

fn arb_movement() -> impl Strategy<Value = Movement> {
    prop_oneof![
        arb_amount().prop_map(Movement::Usage),
        (-1_000_000_000_000_000_i64..=1_000_000_000_000_000).prop_map(Movement::Grant),
        (
            prop_oneof![
                Just(TransactionKind::Topup),
                Just(TransactionKind::AutoRecharge),
                Just(TransactionKind::InvoicePayment)
            ],
            arb_amount()
        )
            .prop_map(|(kind, amount)| Movement::CardPayment(kind, amount)),
        (
            prop_oneof![Just(TransactionKind::Refund), Just(TransactionKind::Dispute)],
            arb_amount()
        )
            .prop_map(|(kind, amount)| Movement::Clawback(kind, amount)),
        arb_amount().prop_map(Movement::HoldPlaced),
        (arb_amount(), 0.0_f64..=1.0).prop_map(|(held, share)| Movement::HoldCaptured {
            held,
            cost: ((held as f64) * share) as i64
        }),
        arb_amount().prop_map(Movement::HoldReleased),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Every constructor balances: the customer's delta plus everything the
    /// operator's books receive is zero, and no transfer is zero or negative.
    #[test]
    fn journal_transactions_balance(movement in arb_movement()) {
        let acme = AccountId::parse("acme").unwrap();
        let (journal, expected_available, expected_held) = match movement.clone() {
            Movement::Usage(amount) => (JournalTransaction::usage(&acme, Micros::new(amount)), -amount, 0),
            Movement::Grant(amount) => (JournalTransaction::grant(&acme, Micros::new(amount)).unwrap(), amount, 0),
            Movement::CardPayment(kind, amount) => {
                (JournalTransaction::card_payment(kind, &acme, Micros::new(amount)), amount, 0)
            }
            Movement::Clawback(kind, amount) => {
                (JournalTransaction::clawback(kind, &acme, Micros::new(amount)), -amount, 0)
            }
            Movement::HoldPlaced(amount) => (JournalTransaction::hold_placed(&acme, Micros::new(amount)), -amount, amount),
            Movement::HoldCaptured { held, cost } => (
                JournalTransaction::hold_captured(&acme, Micros::new(held), Micros::new(cost)).unwrap(),
                held - cost,
                -held,
            ),
            Movement::HoldReleased(amount) => (JournalTransaction::hold_released(&acme, Micros::new(amount)), amount, -amount),
        };
        prop_assert_eq!(&journal.account, &acme);
        let mut per_account: BTreeMap<LedgerAccount, i128> = BTreeMap::new();
        for transfer in &journal.transfers {
            prop_assert!(transfer.amount.is_positive(), "{movement:?} has a non-positive transfer");
            prop_assert_ne!(&transfer.from, &transfer.to);
            *per_account.entry(transfer.from.clone()).or_default() -= i128::from(transfer.amount.get());
            *per_account.entry(transfer.to.clone()).or_default() += i128::from(transfer.amount.get());
            // A transaction touches only its own customer's balances.
            for side in [&transfer.from, &transfer.to] {
                if let LedgerAccount::Available(id) | LedgerAccount::Held(id) = side {
                    prop_assert_eq!(id, &acme);
                }
            }
        }
        prop_assert_eq!(per_account.values().sum::<i128>(), 0);
        let delta = journal.customer_delta().unwrap();
        prop_assert_eq!(delta.available.get(), expected_available);
        prop_assert_eq!(delta.held.get(), expected_held);
        let others: i128 = per_account
            .iter()
            .filter(|(account, _)| !matches!(account, LedgerAccount::Available(_) | LedgerAccount::Held(_)))
            .map(|(_, sum)| *sum)
            .sum();
        prop_assert_eq!(i128::from(delta.total().unwrap().get()) + others, 0);
        // The kind follows the constructor.
        let expected_kind = match movement {
            Movement::Usage(_) | Movement::HoldCaptured { .. } => TransactionKind::Usage,
            Movement::Grant(_) => TransactionKind::Grant,
            Movement::CardPayment(kind, _) | Movement::Clawback(kind, _) => kind,
            Movement::HoldPlaced(_) => TransactionKind::HoldPlaced,
            Movement::HoldReleased(_) => TransactionKind::HoldReleased,
        };
        prop_assert_eq!(journal.kind, expected_kind);
    }
}

/// The default book's crossing at Growth, spelled out: $99.99 spent, a $0.03
/// charge crosses $100 and is priced at Starter; the next is at Growth.
#[test]
fn default_book_crossing_example() {
    let book = default_price_book();
    let created = OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap();
    let anchor = CycleAnchor::from_created_at(created);
    let mut state = SpendState::new(anchor, created);
    state
        .record_charge(Micros::new(99_990_000), Micros::ZERO)
        .unwrap();
    let finder = ActionId::parse("email_finder").unwrap();
    let plan = AccountPlan::default();
    let tier = state.current_tier(&book, TierBasis::Cycle);
    let crossing = book.quote(&finder, Quantity::ONE, tier, &plan).unwrap();
    assert_eq!(book.tier(crossing.tier).id.as_str(), "starter");
    assert_eq!(crossing.amount, Micros::new(30_000));
    state.record_charge(crossing.amount, crossing.savings).unwrap();
    let tier = state.current_tier(&book, TierBasis::Cycle);
    let next = book.quote(&finder, Quantity::ONE, tier, &plan).unwrap();
    assert_eq!(book.tier(next.tier).id.as_str(), "growth");
    assert_eq!(next.amount, Micros::new(27_000));
}

/// The extremes of the range round-trip too (random sampling rarely hits them).
#[test]
fn money_extremes_round_trip() {
    for micros in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX] {
        let amount = Micros::new(micros);
        assert_eq!(Micros::parse(&amount.to_string()), Ok(amount), "{amount}");
    }
}
