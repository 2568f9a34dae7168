//! Configuration: the shipped TOML (price book, tiers, limits, sales link),
//! an optional operator file merged over it, and `TOLLGATE_SECTION__KEY`
//! environment overrides. Validated into core types at start: a bad price
//! book stops Tollgate with a clear message, never at the first charge.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use tollgate_core::{
    ActionId, ActionSpec, DeliveryPolicy, DiscountPercent, HoldTtl, Micros, PriceBook, TierBasis, TierId,
    TierSpec, TopupLimits,
};

/// The configuration shipped with Tollgate (also the built-in default).
pub const SHIPPED_CONFIG: &str = include_str!("../../../config/tollgate.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    billing: BillingSection,
    limits: LimitsSection,
    sales: SalesSection,
    payments: PaymentsSection,
    events: EventsSection,
    demo: DemoSection,
    actions: Vec<ActionSection>,
    tiers: Vec<TierSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BillingSection {
    tier_basis: String,
    hold_ttl_seconds: i64,
    hold_sweep_interval_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_body_bytes: usize,
    request_timeout_ms: u64,
    requests_per_second_per_key: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SalesSection {
    booking_url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentsSection {
    topup_minimum: String,
    topup_maximum: String,
    recovery_interval_ms: u64,
    recovery_min_age_seconds: i64,
    receipt_issuer: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsSection {
    balance_low_level: String,
    delivery_poll_interval_ms: u64,
    delivery_first_retry_ms: u64,
    delivery_max_retry_ms: u64,
    delivery_give_up_after_hours: u64,
    delivery_timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoSection {
    create_account: bool,
    credit: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionSection {
    id: String,
    name: String,
    unit: String,
    list_price: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierSection {
    id: String,
    name: String,
    min_spend: String,
    discount_percent: u8,
    #[serde(default)]
    prices: BTreeMap<String, String>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Price book and tiers.
    pub price_book: Arc<PriceBook>,
    /// Cycle or lifetime tiers.
    pub tier_basis: TierBasis,
    /// Default hold time-to-live.
    pub hold_ttl: HoldTtl,
    /// Sweeper period.
    pub hold_sweep_interval_ms: u64,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Per-request timeout.
    pub request_timeout_ms: u64,
    /// Per-key rate limit (0 = off).
    pub requests_per_second_per_key: u32,
    /// Contact Sales link.
    pub booking_url: String,
    /// One-time top-up minimum and maximum.
    pub topup_limits: TopupLimits,
    /// How often open top-ups are reconciled with the processor.
    pub recovery_interval_ms: u64,
    /// How old an open top-up must be before recovery asks the processor about it.
    pub recovery_min_age_seconds: i64,
    /// The merchant named on receipts.
    pub receipt_issuer: String,
    /// The available balance below which `balance.low` fires, once per crossing.
    pub balance_low_level: Micros,
    /// How often the event sender looks for due deliveries.
    pub delivery_poll_interval_ms: u64,
    /// Retries and timeouts of deliveries to operator endpoints.
    pub delivery_policy: DeliveryPolicy,
    /// Whether first start creates the demo account.
    pub create_demo_account: bool,
    /// The demo account's starting credit.
    pub demo_credit: Micros,
}

/// Largest body Tollgate will accept whatever the configuration says (16 MiB).
const MAX_BODY_BYTES_CEILING: usize = 16 * 1024 * 1024;

fn money(field: &str, text: &str) -> anyhow::Result<Micros> {
    Micros::parse(text).with_context(|| format!("{field}: `{text}` is not an amount of money"))
}

/// Loads the shipped configuration, merges `path` over it when given, then
/// the environment's `TOLLGATE_SECTION__KEY` overrides, and validates.
pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let mut figment = Figment::from(Toml::string(SHIPPED_CONFIG));
    if let Some(path) = path {
        if !path.exists() {
            bail!("configuration file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(
        Env::prefixed("TOLLGATE_")
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    );
    let file: FileConfig = figment.extract().context("reading the configuration")?;
    validate(file)
}

fn validate(file: FileConfig) -> anyhow::Result<Config> {
    let actions = file
        .actions
        .into_iter()
        .map(|action| {
            Ok(ActionSpec {
                id: ActionId::parse(&action.id).with_context(|| format!("action id `{}`", action.id))?,
                list_price: money(&format!("actions.{}.list_price", action.id), &action.list_price)?,
                name: action.name,
                unit: action.unit,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tiers = file
        .tiers
        .into_iter()
        .map(|tier| {
            let id = TierId::parse(&tier.id).with_context(|| format!("tier id `{}`", tier.id))?;
            let mut price_overrides = BTreeMap::new();
            for (action, price) in &tier.prices {
                let action_id =
                    ActionId::parse(action).with_context(|| format!("tier `{id}`: action id `{action}`"))?;
                price_overrides.insert(action_id, money(&format!("tiers.{id}.prices.{action}"), price)?);
            }
            Ok(TierSpec {
                min_spend: money(&format!("tiers.{id}.min_spend"), &tier.min_spend)?,
                discount: DiscountPercent::new(tier.discount_percent)
                    .with_context(|| format!("tier `{id}`: discount_percent must be 0 to 100"))?,
                id,
                name: tier.name,
                price_overrides,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let price_book = PriceBook::new(actions, tiers).context("invalid price book")?;
    let tier_basis = match file.billing.tier_basis.as_str() {
        "cycle" => TierBasis::Cycle,
        "lifetime" => TierBasis::Lifetime,
        other => bail!("billing.tier_basis must be \"cycle\" or \"lifetime\", not `{other}`"),
    };
    let hold_ttl = HoldTtl::from_seconds(file.billing.hold_ttl_seconds)
        .context("billing.hold_ttl_seconds must be between 1 second and 7 days")?;
    if file.limits.max_body_bytes == 0 || file.limits.max_body_bytes > MAX_BODY_BYTES_CEILING {
        bail!("limits.max_body_bytes must be between 1 and {MAX_BODY_BYTES_CEILING}");
    }
    if !(file.sales.booking_url.starts_with("https://") || file.sales.booking_url.starts_with("http://")) {
        bail!("sales.booking_url must be an http(s) URL");
    }
    let topup_limits = TopupLimits::new(
        money("payments.topup_minimum", &file.payments.topup_minimum)?,
        money("payments.topup_maximum", &file.payments.topup_maximum)?,
    )
    .context("payments.topup_minimum / topup_maximum")?;
    if file.payments.receipt_issuer.trim().is_empty() {
        bail!("payments.receipt_issuer must not be empty");
    }
    let balance_low_level = money("events.balance_low_level", &file.events.balance_low_level)?;
    if balance_low_level.is_negative() {
        bail!("events.balance_low_level must not be negative");
    }
    if file.events.delivery_give_up_after_hours < 24 {
        bail!("events.delivery_give_up_after_hours must be at least 24 (deliveries are retried for a day)");
    }
    let delivery_policy = DeliveryPolicy {
        first_retry_ms: file.events.delivery_first_retry_ms.clamp(10, 3_600_000),
        max_retry_ms: file.events.delivery_max_retry_ms.clamp(10, 86_400_000),
        give_up_after_ms: file.events.delivery_give_up_after_hours.min(24 * 30) * 3_600_000,
        timeout_ms: file.events.delivery_timeout_ms.clamp(100, 60_000),
    };
    let demo_credit = money("demo.credit", &file.demo.credit)?;
    if demo_credit.is_negative() {
        bail!("demo.credit must not be negative");
    }
    Ok(Config {
        price_book: Arc::new(price_book),
        tier_basis,
        hold_ttl,
        hold_sweep_interval_ms: file.billing.hold_sweep_interval_ms.clamp(50, 3_600_000),
        max_body_bytes: file.limits.max_body_bytes,
        request_timeout_ms: file.limits.request_timeout_ms.clamp(100, 600_000),
        requests_per_second_per_key: file.limits.requests_per_second_per_key,
        booking_url: file.sales.booking_url,
        topup_limits,
        recovery_interval_ms: file.payments.recovery_interval_ms.clamp(1_000, 3_600_000),
        recovery_min_age_seconds: file.payments.recovery_min_age_seconds.clamp(0, 86_400),
        receipt_issuer: file.payments.receipt_issuer,
        balance_low_level,
        delivery_poll_interval_ms: file.events.delivery_poll_interval_ms.clamp(10, 60_000),
        delivery_policy,
        create_demo_account: file.demo.create_account,
        demo_credit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(extra: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("override.toml");
        std::fs::write(&path, extra)?;
        load(Some(&path))
    }

    #[test]
    fn the_shipped_file_is_the_product_price_book() {
        let config = load(None).unwrap();
        assert_eq!(
            config.price_book.version(),
            tollgate_core::pricing::default_price_book().version()
        );
        assert_eq!(config.tier_basis, TierBasis::Cycle);
    }

    #[test]
    fn an_override_file_merges_over_the_shipped_one() {
        let config = load_text("[sales]\nbooking_url = \"https://example.test/book\"\n").unwrap();
        assert_eq!(config.booking_url, "https://example.test/book");
        assert_eq!(config.price_book.actions().len(), 5);
    }

    #[test]
    fn bad_price_books_stop_with_a_clear_message() {
        let unknown = load_text(
            "[[tiers]]\nid = \"starter\"\nname = \"Starter\"\nmin_spend = \"0\"\ndiscount_percent = 0\nprices = { nope = \"0.01\" }\n",
        )
        .unwrap_err();
        assert!(
            format!("{unknown:#}").contains("unknown action `nope`"),
            "{unknown:#}"
        );
        let descending = load_text(
            "[[tiers]]\nid = \"a\"\nname = \"A\"\nmin_spend = \"0\"\ndiscount_percent = 0\n\
             [[tiers]]\nid = \"b\"\nname = \"B\"\nmin_spend = \"0\"\ndiscount_percent = 5\n",
        )
        .unwrap_err();
        assert!(
            format!("{descending:#}").contains("higher spend"),
            "{descending:#}"
        );
        let typo = load_text("[billing]\ntier_bassis = \"cycle\"\n").unwrap_err();
        assert!(format!("{typo:#}").contains("tier_bassis"), "{typo:#}");
        let percent =
            load_text("[[tiers]]\nid = \"a\"\nname = \"A\"\nmin_spend = \"0\"\ndiscount_percent = 101\n")
                .unwrap_err();
        assert!(format!("{percent:#}").contains("0 to 100"), "{percent:#}");
        assert!(load(Some(Path::new("/nonexistent/tollgate.toml"))).is_err());
    }
}
