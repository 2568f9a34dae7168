//! The price book, Spend & Save tiers, sales plans, and the pricing of a charge.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{ActionId, Quantity, TierId};
use crate::money::{Micros, MoneyOverflow};

/// A whole-percent discount, 0 to 100.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiscountPercent(u8);

impl DiscountPercent {
    /// No discount.
    pub const NONE: DiscountPercent = DiscountPercent(0);

    /// Accepts 0 to 100.
    pub fn new(percent: u8) -> Option<DiscountPercent> {
        (percent <= 100).then_some(DiscountPercent(percent))
    }

    /// The percentage.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// `list` less this discount, rounding half up to the micro-dollar.
    pub fn apply(self, list: Micros) -> Micros {
        debug_assert!(!list.is_negative(), "prices are never negative");
        let kept_percent = i128::from(100 - self.0);
        let scaled = i128::from(list.get()) * kept_percent;
        // Half up: add half the divisor before the floor division.
        let rounded = (scaled + 50) / 100;
        let price = i64::try_from(rounded).expect("a discounted price never exceeds its list price");
        debug_assert!(price <= list.get());
        Micros::new(price)
    }
}

/// One billable action of the price book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionSpec {
    /// Stable id used by the API (`email_finder`).
    pub id: ActionId,
    /// Name shown to people (`Email Finder`).
    pub name: String,
    /// What one unit is (`valid email found`).
    pub unit: String,
    /// List price of one unit.
    pub list_price: Micros,
}

/// One Spend & Save tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierSpec {
    /// Stable id (`growth`).
    pub id: TierId,
    /// Name shown to people (`Growth`).
    pub name: String,
    /// Spend from which the tier applies.
    pub min_spend: Micros,
    /// Discount off the list price for actions without an override.
    pub discount: DiscountPercent,
    /// Per-action prices that replace the discounted list price.
    pub price_overrides: BTreeMap<ActionId, Micros>,
}

/// Whether tiers follow the spend of the current cycle or of the account's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TierBasis {
    /// Spend in the current monthly cycle, with one cycle of retention.
    #[default]
    Cycle,
    /// Spend over the account's whole life.
    Lifetime,
}

/// Why a price book configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PriceBookError {
    /// No actions.
    #[error("the price book has no actions")]
    NoActions,
    /// No tiers.
    #[error("the price book has no tiers")]
    NoTiers,
    /// An action id appears twice.
    #[error("action `{0}` is defined twice")]
    DuplicateAction(ActionId),
    /// A tier id appears twice.
    #[error("tier `{0}` is defined twice")]
    DuplicateTier(TierId),
    /// A list or override price below zero.
    #[error("price of `{action}` must not be negative")]
    NegativePrice {
        /// The offending action.
        action: ActionId,
    },
    /// The first tier does not start at $0.
    #[error("the first tier `{0}` must start at a spend of 0")]
    FirstTierNotZero(TierId),
    /// Thresholds not strictly ascending.
    #[error("tier `{0}` must start at a higher spend than the tier before it")]
    TiersNotAscending(TierId),
    /// An override names an action the book does not have.
    #[error("tier `{tier}` overrides the price of unknown action `{action}`")]
    UnknownOverrideAction {
        /// The tier.
        tier: TierId,
        /// The unknown action.
        action: ActionId,
    },
    /// A higher tier would charge more than a lower one, or than list.
    #[error("tier `{tier}` prices `{action}` above the tier before it (or above list)")]
    PriceRises {
        /// The tier.
        tier: TierId,
        /// The action.
        action: ActionId,
    },
    /// A name is empty.
    #[error("{0} needs a non-empty name")]
    EmptyName(String),
}

/// Position of a tier in the ascending tier table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TierIndex(usize);

impl TierIndex {
    /// The first (lowest) tier.
    pub const FIRST: TierIndex = TierIndex(0);

    /// Zero-based position.
    pub const fn get(self) -> usize {
        self.0
    }
}

/// Where a unit price comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceSource {
    /// The tier's discount or its override.
    Tier,
    /// The account's personal discount, larger than the tier's.
    PersonalDiscount,
    /// A custom price set by Sales.
    Custom,
}

impl PriceSource {
    /// Stable lowercase code.
    pub const fn code(self) -> &'static str {
        match self {
            PriceSource::Tier => "tier",
            PriceSource::PersonalDiscount => "personal_discount",
            PriceSource::Custom => "custom",
        }
    }
}

/// What Sales agreed with an account; empty by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountPlan {
    /// A personal discount: the account gets the larger of it and its tier's.
    pub personal_discount: Option<DiscountPercent>,
    /// Per-action prices that win over everything else.
    pub custom_prices: BTreeMap<ActionId, Micros>,
}

/// The price of one unit of an action for one account at one tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitPrice {
    /// The public list price.
    pub list: Micros,
    /// What the account pays.
    pub paid: Micros,
    /// Why it pays that.
    pub source: PriceSource,
}

/// Why a charge cannot be priced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The action is not in the price book.
    #[error("unknown action `{0}`")]
    UnknownAction(ActionId),
    /// `quantity × price` does not fit.
    #[error("quantity × price overflows")]
    Overflow,
}

impl From<MoneyOverflow> for PricingError {
    fn from(_: MoneyOverflow) -> PricingError {
        PricingError::Overflow
    }
}

/// The validated price book: actions with list prices and ascending tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceBook {
    actions: Vec<ActionSpec>,
    tiers: Vec<TierSpec>,
    version: String,
}

impl PriceBook {
    /// Validates a configuration; every rule violation is a clear error.
    pub fn new(actions: Vec<ActionSpec>, tiers: Vec<TierSpec>) -> Result<PriceBook, PriceBookError> {
        if actions.is_empty() {
            return Err(PriceBookError::NoActions);
        }
        let mut action_ids = BTreeSet::new();
        for action in &actions {
            if !action_ids.insert(action.id.clone()) {
                return Err(PriceBookError::DuplicateAction(action.id.clone()));
            }
            if action.list_price.is_negative() {
                return Err(PriceBookError::NegativePrice {
                    action: action.id.clone(),
                });
            }
            if action.name.trim().is_empty() {
                return Err(PriceBookError::EmptyName(format!("action `{}`", action.id)));
            }
        }
        let Some(first) = tiers.first() else {
            return Err(PriceBookError::NoTiers);
        };
        if !first.min_spend.is_zero() {
            return Err(PriceBookError::FirstTierNotZero(first.id.clone()));
        }
        let mut tier_ids = BTreeSet::new();
        for (index, tier) in tiers.iter().enumerate() {
            if !tier_ids.insert(tier.id.clone()) {
                return Err(PriceBookError::DuplicateTier(tier.id.clone()));
            }
            if tier.name.trim().is_empty() {
                return Err(PriceBookError::EmptyName(format!("tier `{}`", tier.id)));
            }
            if index > 0 && tier.min_spend <= tiers[index - 1].min_spend {
                return Err(PriceBookError::TiersNotAscending(tier.id.clone()));
            }
            for (action, price) in &tier.price_overrides {
                if !action_ids.contains(action) {
                    return Err(PriceBookError::UnknownOverrideAction {
                        tier: tier.id.clone(),
                        action: action.clone(),
                    });
                }
                if price.is_negative() {
                    return Err(PriceBookError::NegativePrice {
                        action: action.clone(),
                    });
                }
            }
        }
        let version = fingerprint(&actions, &tiers);
        let book = PriceBook {
            actions,
            tiers,
            version,
        };
        // "The more you use, the cheaper": no tier may charge more than the one below it.
        for action in &book.actions {
            let mut ceiling = action.list_price;
            for (index, tier) in book.tiers.iter().enumerate() {
                let price = book
                    .tier_price(&action.id, TierIndex(index))
                    .expect("action exists");
                if price > ceiling {
                    return Err(PriceBookError::PriceRises {
                        tier: tier.id.clone(),
                        action: action.id.clone(),
                    });
                }
                ceiling = price;
            }
        }
        Ok(book)
    }

    /// A short content hash: every charge records the version it was priced with.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Every action, in configuration order.
    pub fn actions(&self) -> &[ActionSpec] {
        &self.actions
    }

    /// One action by id.
    pub fn action(&self, id: &ActionId) -> Option<&ActionSpec> {
        self.actions.iter().find(|action| &action.id == id)
    }

    /// Every tier, ascending.
    pub fn tiers(&self) -> &[TierSpec] {
        &self.tiers
    }

    /// One tier by position.
    pub fn tier(&self, index: TierIndex) -> &TierSpec {
        &self.tiers[index.0]
    }

    /// The position of a tier id.
    pub fn tier_index(&self, id: &TierId) -> Option<TierIndex> {
        self.tiers.iter().position(|tier| &tier.id == id).map(TierIndex)
    }

    /// The highest tier whose threshold `spend` has reached.
    pub fn tier_for_spend(&self, spend: Micros) -> TierIndex {
        let reached = self
            .tiers
            .iter()
            .take_while(|tier| tier.min_spend <= spend)
            .count();
        // The first tier starts at 0; a negative spend (refunds) still sits in it.
        TierIndex(reached.saturating_sub(1))
    }

    /// The tier after `index`, if any.
    pub fn next_tier(&self, index: TierIndex) -> Option<TierIndex> {
        (index.0 + 1 < self.tiers.len()).then_some(TierIndex(index.0 + 1))
    }

    /// The tier before `index`, if any.
    pub fn previous_tier(&self, index: TierIndex) -> Option<TierIndex> {
        index.0.checked_sub(1).map(TierIndex)
    }

    /// A tier's own price for an action: its override, else list less its discount.
    pub fn tier_price(&self, action: &ActionId, tier: TierIndex) -> Result<Micros, PricingError> {
        let spec = self
            .action(action)
            .ok_or_else(|| PricingError::UnknownAction(action.clone()))?;
        let tier = self.tier(tier);
        Ok(match tier.price_overrides.get(action) {
            Some(price) => *price,
            None => tier.discount.apply(spec.list_price),
        })
    }

    /// What an account pays per unit: a custom price wins; otherwise the lower
    /// of the tier's price and the list price less the personal discount.
    pub fn unit_price(
        &self,
        action: &ActionId,
        tier: TierIndex,
        plan: &AccountPlan,
    ) -> Result<UnitPrice, PricingError> {
        let spec = self
            .action(action)
            .ok_or_else(|| PricingError::UnknownAction(action.clone()))?;
        let list = spec.list_price;
        if let Some(custom) = plan.custom_prices.get(action) {
            return Ok(UnitPrice {
                list,
                paid: *custom,
                source: PriceSource::Custom,
            });
        }
        let tier_price = self.tier_price(action, tier)?;
        let personal_price = plan.personal_discount.map(|discount| discount.apply(list));
        Ok(match personal_price {
            Some(personal) if personal < tier_price => UnitPrice {
                list,
                paid: personal,
                source: PriceSource::PersonalDiscount,
            },
            _ => UnitPrice {
                list,
                paid: tier_price,
                source: PriceSource::Tier,
            },
        })
    }

    /// The effective discount shown for an account: the larger of tier and personal.
    pub fn effective_discount(&self, tier: TierIndex, plan: &AccountPlan) -> DiscountPercent {
        let tier_discount = self.tier(tier).discount;
        match plan.personal_discount {
            Some(personal) if personal > tier_discount => personal,
            _ => tier_discount,
        }
    }

    /// Prices a usage charge at the account's current tier.
    pub fn quote(
        &self,
        action: &ActionId,
        quantity: Quantity,
        tier: TierIndex,
        plan: &AccountPlan,
    ) -> Result<ChargeQuote, PricingError> {
        let unit = self.unit_price(action, tier, plan)?;
        let amount = unit.paid.checked_mul(quantity.get())?;
        let list_amount = unit.list.checked_mul(quantity.get())?;
        // A custom price may sit above list; savings never go negative.
        let savings = list_amount.checked_sub(amount)?.max(Micros::ZERO);
        Ok(ChargeQuote {
            action: action.clone(),
            quantity,
            tier,
            unit_price: unit.paid,
            unit_list_price: unit.list,
            price_source: unit.source,
            amount,
            list_amount,
            savings,
        })
    }
}

/// A priced usage charge, before it touches any balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeQuote {
    /// The action.
    pub action: ActionId,
    /// How many units.
    pub quantity: Quantity,
    /// The tier it was priced at (the tier before the charge).
    pub tier: TierIndex,
    /// Price paid per unit.
    pub unit_price: Micros,
    /// List price per unit.
    pub unit_list_price: Micros,
    /// Where the unit price came from.
    pub price_source: PriceSource,
    /// `quantity × unit_price`.
    pub amount: Micros,
    /// `quantity × unit_list_price`.
    pub list_amount: Micros,
    /// `list_amount − amount`, never negative.
    pub savings: Micros,
}

/// FNV-1a over a canonical rendering: stable across runs and platforms, so
/// the same configuration always yields the same version.
fn fingerprint(actions: &[ActionSpec], tiers: &[TierSpec]) -> String {
    let mut canonical = String::new();
    for action in actions {
        canonical.push_str(&format!(
            "a|{}|{}|{}|{}\n",
            action.id,
            action.name,
            action.unit,
            action.list_price.get()
        ));
    }
    for tier in tiers {
        canonical.push_str(&format!(
            "t|{}|{}|{}|{}\n",
            tier.id,
            tier.name,
            tier.min_spend.get(),
            tier.discount.get()
        ));
        for (action, price) in &tier.price_overrides {
            canonical.push_str(&format!("o|{}|{}\n", action, price.get()));
        }
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("pb_{hash:016x}")
}

/// The default price book of PRODUCT.md, for tests and as the shipped configuration's twin.
pub fn default_price_book() -> PriceBook {
    let action = |id: &str, name: &str, unit: &str, micros: i64| ActionSpec {
        id: ActionId::parse(id).expect("valid id"),
        name: name.to_owned(),
        unit: unit.to_owned(),
        list_price: Micros::new(micros),
    };
    let actions = vec![
        action("email_finder", "Email Finder", "valid email found", 30_000),
        action("email_validation", "Email Validation", "email checked", 5_000),
        action("export", "Export", "row exported", 20_000),
        action("ui_search", "UI Search", "search", 0),
        action("api", "API", "request", 20_000),
    ];
    let tier = |id: &str, name: &str, dollars: i64, percent: u8, export_micros: i64| TierSpec {
        id: TierId::parse(id).expect("valid id"),
        name: name.to_owned(),
        min_spend: Micros::from_dollars(dollars).expect("small"),
        discount: DiscountPercent::new(percent).expect("≤ 100"),
        price_overrides: BTreeMap::from([(
            ActionId::parse("export").expect("valid id"),
            Micros::new(export_micros),
        )]),
    };
    let tiers = vec![
        tier("starter", "Starter", 0, 0, 20_000),
        tier("growth", "Growth", 100, 10, 19_600),
        tier("pro", "Pro", 500, 20, 19_200),
        tier("scale", "Scale", 2_000, 35, 18_800),
        tier("business", "Business", 10_000, 50, 18_400),
        tier("enterprise", "Enterprise", 50_000, 60, 18_000),
    ];
    PriceBook::new(actions, tiers).expect("the default price book is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> ActionId {
        ActionId::parse(text).unwrap()
    }

    #[test]
    fn discounts_round_half_up() {
        let percent = |p| DiscountPercent::new(p).unwrap();
        assert_eq!(percent(35).apply(Micros::new(5_000)), Micros::new(3_250));
        assert_eq!(percent(10).apply(Micros::new(30_000)), Micros::new(27_000));
        // 0.65 × 1 = 0.65 → 1 (half up); 0.5 × 1 = 0.5 → 1; 0.4 × 1 → 0.
        assert_eq!(percent(35).apply(Micros::new(1)), Micros::new(1));
        assert_eq!(percent(50).apply(Micros::new(1)), Micros::new(1));
        assert_eq!(percent(60).apply(Micros::new(1)), Micros::new(0));
        assert_eq!(percent(100).apply(Micros::new(123)), Micros::ZERO);
        assert_eq!(percent(0).apply(Micros::new(123)), Micros::new(123));
        assert!(DiscountPercent::new(101).is_none());
    }

    #[test]
    fn default_book_matches_the_product_table() {
        let book = default_price_book();
        let growth = book.tier_index(&TierId::parse("growth").unwrap()).unwrap();
        let scale = book.tier_index(&TierId::parse("scale").unwrap()).unwrap();
        let plan = AccountPlan::default();
        assert_eq!(
            book.unit_price(&id("email_finder"), growth, &plan).unwrap().paid,
            Micros::new(27_000)
        );
        assert_eq!(
            book.unit_price(&id("email_validation"), scale, &plan)
                .unwrap()
                .paid,
            Micros::new(3_250)
        );
        assert_eq!(
            book.unit_price(&id("export"), scale, &plan).unwrap().paid,
            Micros::new(18_800)
        );
        assert_eq!(
            book.unit_price(&id("ui_search"), scale, &plan).unwrap().paid,
            Micros::ZERO
        );
        assert_eq!(
            book.tier_for_spend(Micros::from_dollars(99).unwrap()),
            TierIndex::FIRST
        );
        assert_eq!(book.tier_for_spend(Micros::from_dollars(100).unwrap()), growth);
        assert_eq!(book.tier_for_spend(Micros::new(-5)), TierIndex::FIRST);
        assert_eq!(book.version(), default_price_book().version());
    }

    #[test]
    fn plan_precedence_custom_then_larger_discount() {
        let book = default_price_book();
        let growth = TierIndex(1);
        let mut plan = AccountPlan {
            personal_discount: DiscountPercent::new(25),
            custom_prices: BTreeMap::new(),
        };
        let finder = book.unit_price(&id("email_finder"), growth, &plan).unwrap();
        assert_eq!(
            (finder.paid, finder.source),
            (Micros::new(22_500), PriceSource::PersonalDiscount)
        );
        // Export's tier override (0.0196) beats 25% off list (0.015)? No: 0.015 is lower.
        let export = book.unit_price(&id("export"), growth, &plan).unwrap();
        assert_eq!(export.paid, Micros::new(15_000));
        plan.personal_discount = DiscountPercent::new(5);
        let finder = book.unit_price(&id("email_finder"), growth, &plan).unwrap();
        assert_eq!(
            (finder.paid, finder.source),
            (Micros::new(27_000), PriceSource::Tier)
        );
        plan.custom_prices.insert(id("email_finder"), Micros::new(10_000));
        let finder = book.unit_price(&id("email_finder"), growth, &plan).unwrap();
        assert_eq!(
            (finder.paid, finder.source),
            (Micros::new(10_000), PriceSource::Custom)
        );
        assert_eq!(book.effective_discount(growth, &plan).get(), 10);
    }

    proptest::proptest! {
        /// For any tier, personal discount and custom price: a custom price wins outright;
        /// otherwise the account never pays more than its tier's price or the list price
        /// less its personal discount, and a larger personal discount never costs more.
        #[test]
        fn plan_precedence_holds_for_every_plan(
            tier in 0_usize..6,
            personal in proptest::option::of(0_u8..=100),
            more in 0_u8..=100,
            custom in proptest::option::of(0_i64..100_000),
            action in 0_usize..5,
        ) {
            let book = default_price_book();
            let action = book.actions()[action].id.clone();
            let tier = TierIndex(tier);
            let mut plan = AccountPlan {
                personal_discount: personal.and_then(DiscountPercent::new),
                custom_prices: BTreeMap::new(),
            };
            let list = book.action(&action).unwrap().list_price;
            let priced = book.unit_price(&action, tier, &plan).unwrap();
            let tier_price = book.tier_price(&action, tier).unwrap();
            proptest::prop_assert!(priced.paid <= tier_price && priced.paid <= list);
            proptest::prop_assert!(!priced.paid.is_negative());
            if let Some(discount) = plan.personal_discount {
                proptest::prop_assert_eq!(priced.paid, tier_price.min(discount.apply(list)));
                let deeper = DiscountPercent::new(discount.get().saturating_add(more).min(100)).unwrap();
                let deeper_plan = AccountPlan { personal_discount: Some(deeper), ..plan.clone() };
                proptest::prop_assert!(book.unit_price(&action, tier, &deeper_plan).unwrap().paid <= priced.paid);
            } else {
                proptest::prop_assert_eq!((priced.paid, priced.source), (tier_price, PriceSource::Tier));
            }
            if let Some(custom) = custom {
                plan.custom_prices.insert(action.clone(), Micros::new(custom));
                let priced = book.unit_price(&action, tier, &plan).unwrap();
                proptest::prop_assert_eq!((priced.paid, priced.source), (Micros::new(custom), PriceSource::Custom));
            }
        }
    }

    #[test]
    fn invalid_books_are_refused_with_a_reason() {
        let good = default_price_book();
        let mut tiers = good.tiers().to_vec();
        tiers.swap(1, 2);
        assert!(matches!(
            PriceBook::new(good.actions().to_vec(), tiers),
            Err(PriceBookError::TiersNotAscending(_))
        ));
        let mut tiers = good.tiers().to_vec();
        tiers[0].min_spend = Micros::new(1);
        assert!(matches!(
            PriceBook::new(good.actions().to_vec(), tiers),
            Err(PriceBookError::FirstTierNotZero(_))
        ));
        let mut tiers = good.tiers().to_vec();
        tiers[2].price_overrides.insert(id("nope"), Micros::ZERO);
        assert!(matches!(
            PriceBook::new(good.actions().to_vec(), tiers),
            Err(PriceBookError::UnknownOverrideAction { .. })
        ));
        let mut tiers = good.tiers().to_vec();
        tiers[3].price_overrides.insert(id("export"), Micros::new(25_000));
        assert!(matches!(
            PriceBook::new(good.actions().to_vec(), tiers),
            Err(PriceBookError::PriceRises { .. })
        ));
        let mut actions = good.actions().to_vec();
        actions.push(actions[0].clone());
        assert!(matches!(
            PriceBook::new(actions, good.tiers().to_vec()),
            Err(PriceBookError::DuplicateAction(_))
        ));
        assert_eq!(
            PriceBook::new(vec![], good.tiers().to_vec()),
            Err(PriceBookError::NoActions)
        );
        assert_eq!(
            PriceBook::new(good.actions().to_vec(), vec![]),
            Err(PriceBookError::NoTiers)
        );
    }

    #[test]
    fn quote_multiplies_exactly_and_detects_overflow() {
        let book = default_price_book();
        let plan = AccountPlan::default();
        let quote = book
            .quote(
                &id("email_finder"),
                Quantity::new(3).unwrap(),
                TierIndex(2),
                &plan,
            )
            .unwrap();
        assert_eq!(quote.amount, Micros::new(72_000));
        assert_eq!(quote.list_amount, Micros::new(90_000));
        assert_eq!(quote.savings, Micros::new(18_000));
        let mut expensive = AccountPlan::default();
        expensive
            .custom_prices
            .insert(id("api"), Micros::new(i64::MAX / 2));
        assert_eq!(
            book.quote(
                &id("api"),
                Quantity::new(3).unwrap(),
                TierIndex::FIRST,
                &expensive
            ),
            Err(PricingError::Overflow)
        );
        assert_eq!(
            book.quote(&id("nope"), Quantity::ONE, TierIndex::FIRST, &plan),
            Err(PricingError::UnknownAction(id("nope")))
        );
    }
}
