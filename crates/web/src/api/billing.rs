//! `GET /v1/accounts/{id}/billing` (everything the Billing & Usage page
//! shows) and `GET /v1/tiers`.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use tollgate_core::cycle::project_unlock;
use tollgate_core::{PriceBook, TierBasis, TierIndex, Timestamp};
use tollgate_store::AccountRecord;
use utoipa::ToSchema;

use crate::api::json::{AutoRecharge, PaymentMethod, TierSummary, credit_limit, timestamp, total};
use crate::error::{ApiError, ErrorBody};
use crate::extract::path_account_id;
use crate::state::AppState;

/// The current billing cycle.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cycle {
    /// First instant of the cycle.
    pub start: String,
    /// First instant of the next cycle.
    pub end: String,
    /// Usage charges in the cycle, net of refunds.
    #[schema(example = "42.50")]
    pub spent: String,
}

/// List price minus price paid.
#[derive(Debug, Serialize, ToSchema)]
pub struct Savings {
    /// This cycle.
    pub cycle: String,
    /// Over the account's life.
    pub lifetime: String,
}

/// The tier after the current one.
#[derive(Debug, Serialize, ToSchema)]
pub struct NextTier {
    /// Tier id.
    #[schema(example = "pro")]
    pub id: String,
    /// Tier name.
    pub name: String,
    /// Its discount.
    pub discount_percent: u8,
    /// Spend still needed to reach it.
    #[schema(example = "57.50")]
    pub spend_needed: String,
    /// When it unlocks at this cycle's pace; `null` when not this cycle.
    pub projected_at: Option<String>,
}

/// The account's price of one action.
#[derive(Debug, Serialize, ToSchema)]
pub struct PriceLine {
    /// Action id.
    #[schema(example = "email_finder")]
    pub action: String,
    /// Action name.
    pub name: String,
    /// What one unit is.
    pub unit: String,
    /// Public list price per unit.
    #[schema(example = "0.03")]
    pub list_price: String,
    /// What this account pays per unit.
    #[schema(example = "0.027")]
    pub price: String,
    /// `tier`, `personal_discount` or `custom`.
    pub price_source: &'static str,
}

/// Everything the Billing & Usage page shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct BillingSummary {
    /// Always `billing_summary`.
    #[schema(example = "billing_summary")]
    pub object: &'static str,
    /// The account.
    pub account_id: String,
    /// Total balance: available plus held.
    pub balance: String,
    /// What may be spent now.
    pub available_balance: String,
    /// Reserved by active holds.
    pub held_balance: String,
    /// The tier pricing the next charge, with the discount the account gets.
    pub tier: TierSummary,
    /// The current cycle and its spend.
    pub cycle: Cycle,
    /// Savings against list prices.
    pub savings: Savings,
    /// The next tier, or `null` at the top.
    pub next_tier: Option<NextTier>,
    /// The account's price of every action.
    pub prices: Vec<PriceLine>,
    /// The card on file.
    pub payment_method: Option<PaymentMethod>,
    /// The auto top-up rule.
    pub auto_recharge: AutoRecharge,
    /// `prepaid` or `invoice`.
    pub billing_mode: &'static str,
    /// How far below zero an invoice account may go; `null` for prepaid.
    pub credit_limit: Option<String>,
    /// `cycle` or `lifetime`: which spend tiers follow.
    pub tier_basis: &'static str,
    /// Where "Contact Sales" leads; `null` when not configured.
    pub contact_sales_url: Option<String>,
}

fn next_tier(record: &AccountRecord, book: &PriceBook, basis: TierBasis, now: Timestamp) -> Option<NextTier> {
    let next = record.spend.next_tier(book, basis)?;
    let summary = TierSummary::of(book, next.tier);
    let cycle = record.spend.cycle(record.anchor());
    Some(NextTier {
        id: summary.id,
        name: summary.name,
        discount_percent: summary.discount_percent,
        spend_needed: next.spend_needed.to_string(),
        projected_at: project_unlock(cycle, record.spend.cycle_spend, next.spend_needed, now).map(timestamp),
    })
}

fn prices(record: &AccountRecord, book: &PriceBook, tier: TierIndex) -> Result<Vec<PriceLine>, ApiError> {
    book.actions()
        .iter()
        .map(|action| {
            let price = book
                .unit_price(&action.id, tier, &record.plan)
                .map_err(|error| ApiError::internal(&error))?;
            Ok(PriceLine {
                action: action.id.to_string(),
                name: action.name.clone(),
                unit: action.unit.clone(),
                list_price: price.list.to_string(),
                price: price.paid.to_string(),
                price_source: price.source.code(),
            })
        })
        .collect()
}

/// Builds the summary of one account at `now`.
pub fn summary(
    record: &AccountRecord,
    book: &PriceBook,
    basis: TierBasis,
    now: Timestamp,
    booking_url: &str,
) -> Result<BillingSummary, ApiError> {
    let spend = &record.spend;
    let cycle = spend.cycle(record.anchor());
    Ok(BillingSummary {
        object: "billing_summary",
        account_id: record.id.to_string(),
        balance: total(record.balances)?.to_string(),
        available_balance: record.balances.available.to_string(),
        held_balance: record.balances.held.to_string(),
        tier: TierSummary::current(record, book, basis),
        cycle: Cycle {
            start: timestamp(cycle.start),
            end: timestamp(cycle.end),
            spent: spend.cycle_spend.to_string(),
        },
        savings: Savings {
            cycle: spend.cycle_savings.to_string(),
            lifetime: spend.lifetime_savings.to_string(),
        },
        next_tier: next_tier(record, book, basis, now),
        prices: prices(record, book, spend.current_tier(book, basis))?,
        payment_method: None,
        auto_recharge: AutoRecharge::off(),
        billing_mode: record.mode.code(),
        credit_limit: credit_limit(record.mode),
        tier_basis: match basis {
            TierBasis::Cycle => "cycle",
            TierBasis::Lifetime => "lifetime",
        },
        contact_sales_url: (!booking_url.is_empty()).then(|| booking_url.to_owned()),
    })
}

/// Balance, tier, cycle spend, savings, next tier and prices of one account.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/billing",
    tag = "billing",
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The billing summary", body = BillingSummary),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
pub async fn billing_summary(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BillingSummary>, ApiError> {
    let account = path_account_id(&id)?;
    let record = state.store().account(&account).await?;
    let config = state.config();
    let mut summary = summary(
        &record,
        &config.price_book,
        config.tier_basis,
        config.clock.now(),
        &config.booking_url,
    )?;
    summary.payment_method = crate::api::accounts::card_of(&state, &account).await?;
    summary.auto_recharge = crate::api::auto_recharge::auto_recharge_of(&state, &account).await?;
    Ok(Json(summary))
}

/// A tier's price of one action.
#[derive(Debug, Serialize, ToSchema)]
pub struct TierPrice {
    /// Action id.
    pub action: String,
    /// Public list price per unit.
    pub list_price: String,
    /// Price per unit at this tier.
    pub price: String,
}

/// One Spend & Save tier.
#[derive(Debug, Serialize, ToSchema)]
pub struct Tier {
    /// Tier id.
    #[schema(example = "growth")]
    pub id: String,
    /// Always `tier`.
    #[schema(example = "tier")]
    pub object: &'static str,
    /// Tier name.
    pub name: String,
    /// Spend from which the tier applies.
    #[schema(example = "100.00")]
    pub min_spend: String,
    /// Discount off list prices (actions without an override).
    pub discount_percent: u8,
    /// Every action's price at this tier.
    pub prices: Vec<TierPrice>,
}

/// The tiers, ascending.
#[derive(Debug, Serialize, ToSchema)]
pub struct TierList {
    /// The tiers, from the lowest threshold up.
    pub data: Vec<Tier>,
    /// Always false: every tier is listed.
    pub has_more: bool,
}

/// Every tier of the price book with its prices.
pub fn tiers(book: &PriceBook) -> Result<TierList, ApiError> {
    let data = (0..book.tiers().len())
        .map(|position| {
            let spec = &book.tiers()[position];
            let index = book
                .tier_index(&spec.id)
                .ok_or_else(|| ApiError::internal(&"tier lost its index"))?;
            let prices = book
                .actions()
                .iter()
                .map(|action| {
                    let price = book
                        .tier_price(&action.id, index)
                        .map_err(|error| ApiError::internal(&error))?;
                    Ok(TierPrice {
                        action: action.id.to_string(),
                        list_price: action.list_price.to_string(),
                        price: price.to_string(),
                    })
                })
                .collect::<Result<_, ApiError>>()?;
            Ok(Tier {
                id: spec.id.to_string(),
                object: "tier",
                name: spec.name.clone(),
                min_spend: spec.min_spend.to_string(),
                discount_percent: spec.discount.get(),
                prices,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(TierList {
        data,
        has_more: false,
    })
}

/// The Spend & Save tiers in ascending order, with every action's price.
#[utoipa::path(
    get,
    path = "/v1/tiers",
    tag = "billing",
    responses(
        (status = 200, description = "The tiers", body = TierList),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    )
)]
pub async fn list_tiers(State(state): State<AppState>) -> Result<Json<TierList>, ApiError> {
    Ok(Json(tiers(&state.config().price_book)?))
}
