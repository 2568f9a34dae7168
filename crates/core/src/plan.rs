//! What Sales agrees with an account (PRODUCT.md "Contact Sales"): billing mode and
//! credit limit, a personal discount, per-action custom prices and net terms, checked
//! once at the edge so the store only ever saves a plan that can be priced.

use std::collections::BTreeMap;

use crate::{AccountId, AccountPlan, ActionId, Actor, BillingMode, DiscountPercent, Micros, PriceBook};

/// Highest credit limit an invoice account may have: $1,000,000.00.
pub const MAX_CREDIT_LIMIT: Micros = Micros::new(1_000_000 * crate::money::MICROS_PER_DOLLAR);
/// Highest custom unit price: $1,000.00 (list prices are cents).
pub const MAX_CUSTOM_PRICE: Micros = Micros::new(1_000 * crate::money::MICROS_PER_DOLLAR);
/// Longest net terms, in days.
pub const MAX_NET_TERMS_DAYS: u16 = 365;
/// Net terms of an invoice account when Sales names none.
pub const DEFAULT_NET_TERMS_DAYS: u16 = 30;

/// A plan field that cannot be saved, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidPlan {
    /// The request field at fault (`credit_limit`, `prices.export`).
    pub field: String,
    /// What is wrong, in words.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidPlan {
    InvalidPlan {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A validated plan to save on an account, replacing the one it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanCommand {
    /// Whose plan.
    pub account: AccountId,
    /// Prepaid, or invoiced with a credit limit.
    pub mode: BillingMode,
    /// Personal discount and custom prices.
    pub plan: AccountPlan,
    /// Days an invoice may stay unpaid (invoice accounts only).
    pub net_terms_days: Option<u16>,
    /// Who agreed it, for the audit log.
    pub actor: Actor,
}

/// The parts of a plan as the request gave them, amounts already parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanRequest {
    /// `true` for invoice billing.
    pub invoice: bool,
    /// Credit limit (invoice only).
    pub credit_limit: Option<Micros>,
    /// Whole percent, 0–100.
    pub discount_percent: Option<u8>,
    /// Unit prices by action id text.
    pub prices: BTreeMap<String, Micros>,
    /// Net terms (invoice only).
    pub net_terms_days: Option<u16>,
}

impl PlanCommand {
    /// Checks `request` against the price book and the bounds above.
    pub fn new(
        account: AccountId,
        request: PlanRequest,
        book: &PriceBook,
        actor: Actor,
    ) -> Result<PlanCommand, InvalidPlan> {
        let mode = if request.invoice {
            let credit_limit = request.credit_limit.unwrap_or(Micros::ZERO);
            if credit_limit.is_negative() || credit_limit > MAX_CREDIT_LIMIT {
                return Err(invalid(
                    "credit_limit",
                    format!("must be from 0.00 to {MAX_CREDIT_LIMIT}"),
                ));
            }
            if !credit_limit.is_whole_cents() {
                return Err(invalid("credit_limit", "must be whole cents"));
            }
            BillingMode::Invoice { credit_limit }
        } else {
            if request.credit_limit.is_some_and(|limit| !limit.is_zero()) {
                return Err(invalid(
                    "credit_limit",
                    "only invoice accounts have a credit limit",
                ));
            }
            if request.net_terms_days.is_some() {
                return Err(invalid("net_terms_days", "only invoice accounts have net terms"));
            }
            BillingMode::Prepaid
        };
        let net_terms_days = match (request.invoice, request.net_terms_days) {
            (false, _) => None,
            (true, None) => Some(DEFAULT_NET_TERMS_DAYS),
            (true, Some(days)) if (1..=MAX_NET_TERMS_DAYS).contains(&days) => Some(days),
            (true, Some(_)) => {
                return Err(invalid(
                    "net_terms_days",
                    format!("must be from 1 to {MAX_NET_TERMS_DAYS}"),
                ));
            }
        };
        let personal_discount = request
            .discount_percent
            .map(|percent| {
                DiscountPercent::new(percent)
                    .ok_or_else(|| invalid("discount_percent", "must be from 0 to 100"))
            })
            .transpose()?;
        let mut custom_prices = BTreeMap::new();
        for (action, price) in request.prices {
            let field = format!("prices.{action}");
            let id = ActionId::parse(&action).map_err(|error| invalid(&field, error.to_string()))?;
            if book.action(&id).is_none() {
                return Err(invalid(&field, "is not an action of the price book"));
            }
            if price.is_negative() || price > MAX_CUSTOM_PRICE {
                return Err(invalid(&field, format!("must be from 0 to {MAX_CUSTOM_PRICE}")));
            }
            custom_prices.insert(id, price);
        }
        Ok(PlanCommand {
            account,
            mode,
            plan: AccountPlan {
                personal_discount,
                custom_prices,
            },
            net_terms_days,
            actor,
        })
    }

    /// The plan as `key=value` text, for the audit log.
    pub fn describe(mode: BillingMode, plan: &AccountPlan, net_terms_days: Option<u16>) -> String {
        let mut text = match mode {
            BillingMode::Prepaid => "billing_mode=prepaid".to_owned(),
            BillingMode::Invoice { credit_limit } => {
                format!("billing_mode=invoice credit_limit={credit_limit}")
            }
        };
        if let Some(days) = net_terms_days {
            text.push_str(&format!(" net_terms_days={days}"));
        }
        if let Some(discount) = plan.personal_discount {
            text.push_str(&format!(" discount_percent={}", discount.get()));
        }
        for (action, price) in &plan.custom_prices {
            text.push_str(&format!(" price.{action}={price}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::default_price_book;

    fn account() -> AccountId {
        AccountId::parse("acme").unwrap()
    }

    fn command(request: PlanRequest) -> Result<PlanCommand, InvalidPlan> {
        PlanCommand::new(account(), request, &default_price_book(), Actor::System)
    }

    #[test]
    fn a_full_invoice_plan_is_accepted_with_default_terms() {
        let plan = command(PlanRequest {
            invoice: true,
            credit_limit: Micros::from_dollars(5_000),
            discount_percent: Some(15),
            prices: BTreeMap::from([("email_finder".to_owned(), Micros::new(10_000))]),
            net_terms_days: None,
        })
        .unwrap();
        assert_eq!(
            plan.mode,
            BillingMode::Invoice {
                credit_limit: Micros::from_dollars(5_000).unwrap()
            }
        );
        assert_eq!(plan.net_terms_days, Some(DEFAULT_NET_TERMS_DAYS));
        assert_eq!(
            PlanCommand::describe(plan.mode, &plan.plan, plan.net_terms_days),
            "billing_mode=invoice credit_limit=5000.00 net_terms_days=30 discount_percent=15 price.email_finder=0.01"
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                PlanRequest {
                    credit_limit: Micros::from_dollars(10),
                    ..PlanRequest::default()
                },
                "credit_limit",
            ),
            (
                PlanRequest {
                    invoice: true,
                    credit_limit: Some(Micros::new(-1)),
                    ..PlanRequest::default()
                },
                "credit_limit",
            ),
            (
                PlanRequest {
                    invoice: true,
                    credit_limit: Some(Micros::new(1)),
                    ..PlanRequest::default()
                },
                "credit_limit",
            ),
            (
                PlanRequest {
                    net_terms_days: Some(30),
                    ..PlanRequest::default()
                },
                "net_terms_days",
            ),
            (
                PlanRequest {
                    invoice: true,
                    net_terms_days: Some(0),
                    ..PlanRequest::default()
                },
                "net_terms_days",
            ),
            (
                PlanRequest {
                    discount_percent: Some(101),
                    ..PlanRequest::default()
                },
                "discount_percent",
            ),
            (
                PlanRequest {
                    prices: BTreeMap::from([("teleport".to_owned(), Micros::new(1))]),
                    ..PlanRequest::default()
                },
                "prices.teleport",
            ),
            (
                PlanRequest {
                    prices: BTreeMap::from([("export".to_owned(), Micros::new(-1))]),
                    ..PlanRequest::default()
                },
                "prices.export",
            ),
        ];
        for (request, field) in cases {
            assert_eq!(command(request).unwrap_err().field, field);
        }
    }
}
