//! Validated commands: what the edge parses requests into. A command that
//! exists is well-formed; the store only decides whether it fits the state.

use std::fmt;

use crate::hold::HoldTtl;
use crate::ids::{AccountId, ActionId, IdempotencyKey, InvalidId, Quantity};
use crate::money::Micros;

/// Largest amount one grant or hold may move ($1,000,000): a typo, not a deal.
pub const MAX_OPERATION_AMOUNT: Micros = Micros::new(1_000_000 * crate::money::MICROS_PER_DOLLAR);
/// Longest account name, grant reason or similar free text.
pub const MAX_TEXT_LENGTH: usize = 500;

/// Why a command could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    /// A malformed identifier or count.
    #[error(transparent)]
    Id(#[from] InvalidId),
    /// A malformed or out-of-range amount.
    #[error("{0}")]
    Amount(String),
    /// A malformed text field.
    #[error("{field}: {reason}")]
    Text {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Who asked for a change, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// An API key, by its public id.
    ApiKey(String),
    /// Someone at the command line, by user name.
    Cli(String),
    /// Tollgate itself (sweepers, workers).
    System,
}

impl fmt::Display for Actor {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::ApiKey(id) => write!(formatter, "api_key:{id}"),
            Actor::Cli(user) => write!(formatter, "cli:{user}"),
            Actor::System => formatter.write_str("system"),
        }
    }
}

fn checked_text(field: &'static str, text: &str, required: bool) -> Result<String, InvalidCommand> {
    let trimmed = text.trim();
    if required && trimmed.is_empty() {
        return Err(InvalidCommand::Text {
            field,
            reason: "must not be empty",
        });
    }
    if trimmed.chars().count() > MAX_TEXT_LENGTH {
        return Err(InvalidCommand::Text {
            field,
            reason: "is too long (500 characters at most)",
        });
    }
    if trimmed.chars().any(char::is_control) {
        return Err(InvalidCommand::Text {
            field,
            reason: "must not contain control characters",
        });
    }
    Ok(trimmed.to_owned())
}

/// A new customer account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAccount {
    /// The operator's id for it.
    pub id: AccountId,
    /// Display name.
    pub name: String,
    /// Billing e-mail address.
    pub email: String,
    /// Who creates it, for the audit log (`Actor::System` unless told).
    pub created_by: Actor,
}

impl NewAccount {
    /// Records who creates the account.
    pub fn created_by(self, actor: Actor) -> NewAccount {
        NewAccount {
            created_by: actor,
            ..self
        }
    }

    /// Validates the name (non-empty) and e-mail (one `@`, no spaces, ≤ 254).
    pub fn new(id: AccountId, name: &str, email: &str) -> Result<NewAccount, InvalidCommand> {
        let name = checked_text("name", name, true)?;
        let email = email.trim();
        let well_formed = email.len() <= 254
            && !email.chars().any(char::is_whitespace)
            && matches!(email.split_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
        if !well_formed {
            return Err(InvalidCommand::Text {
                field: "email",
                reason: "must be an e-mail address",
            });
        }
        Ok(NewAccount {
            id,
            name,
            email: email.to_owned(),
            created_by: Actor::System,
        })
    }
}

/// Charge `quantity` units of `action` to `account`, once per key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageCommand {
    /// Who pays.
    pub account: AccountId,
    /// What was done.
    pub action: ActionId,
    /// How many units.
    pub quantity: Quantity,
    /// Makes the charge happen at most once.
    pub idempotency_key: IdempotencyKey,
}

impl UsageCommand {
    /// Canonical request identity: a replay must match it to get the stored result.
    pub fn fingerprint(&self) -> String {
        format!("usage\u{1f}{}\u{1f}{}", self.action, self.quantity)
    }
}

/// An operator credit (positive) or debit (negative).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantCommand {
    /// Whose balance.
    pub account: AccountId,
    /// Signed, non-zero, at most [`MAX_OPERATION_AMOUNT`] either way.
    pub amount: Micros,
    /// Why, recorded in the ledger and the audit log.
    pub reason: String,
    /// Makes the grant happen at most once.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Who asked.
    pub actor: Actor,
}

impl GrantCommand {
    /// Validates amount and reason.
    pub fn new(
        account: AccountId,
        amount: Micros,
        reason: &str,
        idempotency_key: Option<IdempotencyKey>,
        actor: Actor,
    ) -> Result<GrantCommand, InvalidCommand> {
        if amount.is_zero() {
            return Err(InvalidCommand::Amount("amount must not be zero".to_owned()));
        }
        let magnitude = amount
            .checked_neg()
            .map_err(|_| InvalidCommand::Amount("amount is too large".to_owned()))?
            .max(amount);
        if magnitude > MAX_OPERATION_AMOUNT {
            return Err(InvalidCommand::Amount(format!(
                "amount must be at most {MAX_OPERATION_AMOUNT} either way"
            )));
        }
        let reason = checked_text("reason", reason, true)?;
        Ok(GrantCommand {
            account,
            amount,
            reason,
            idempotency_key,
            actor,
        })
    }

    /// Canonical request identity for idempotent replays.
    pub fn fingerprint(&self) -> String {
        format!("grant\u{1f}{}\u{1f}{}", self.amount.get(), self.reason)
    }
}

/// Reserve funds for an action of unknown final cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldCommand {
    /// Whose funds.
    pub account: AccountId,
    /// The action the hold is for; its price applies at capture.
    pub action: ActionId,
    /// Positive, at most [`MAX_OPERATION_AMOUNT`].
    pub amount: Micros,
    /// How long until the hold releases itself.
    pub ttl: HoldTtl,
    /// Makes the hold happen at most once.
    pub idempotency_key: IdempotencyKey,
}

impl HoldCommand {
    /// Validates the amount.
    pub fn new(
        account: AccountId,
        action: ActionId,
        amount: Micros,
        ttl: HoldTtl,
        idempotency_key: IdempotencyKey,
    ) -> Result<HoldCommand, InvalidCommand> {
        if !amount.is_positive() || amount > MAX_OPERATION_AMOUNT {
            return Err(InvalidCommand::Amount(format!(
                "amount must be above 0 and at most {MAX_OPERATION_AMOUNT}"
            )));
        }
        Ok(HoldCommand {
            account,
            action,
            amount,
            ttl,
            idempotency_key,
        })
    }

    /// Canonical request identity for idempotent replays.
    pub fn fingerprint(&self) -> String {
        format!(
            "hold\u{1f}{}\u{1f}{}\u{1f}{}",
            self.action,
            self.amount.get(),
            self.ttl.duration().whole_seconds()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> AccountId {
        AccountId::parse("acme").unwrap()
    }

    #[test]
    fn accounts_need_a_name_and_an_email() {
        assert!(NewAccount::new(acme(), "Acme", "billing@acme.test").is_ok());
        assert!(NewAccount::new(acme(), "  ", "billing@acme.test").is_err());
        assert!(NewAccount::new(acme(), "Acme", "billing").is_err());
        assert!(NewAccount::new(acme(), "Acme", "a b@c").is_err());
        assert!(NewAccount::new(acme(), "Acme", "a@b@c").is_err());
        assert!(NewAccount::new(acme(), &"x".repeat(501), "a@b").is_err());
    }

    #[test]
    fn grants_are_bounded() {
        let grant = |micros| GrantCommand::new(acme(), Micros::new(micros), "goodwill", None, Actor::System);
        assert!(grant(25_000_000).is_ok());
        assert!(grant(-25_000_000).is_ok());
        assert!(grant(0).is_err());
        assert!(grant(MAX_OPERATION_AMOUNT.get() + 1).is_err());
        assert!(grant(-MAX_OPERATION_AMOUNT.get() - 1).is_err());
        assert!(grant(i64::MIN).is_err());
        assert!(GrantCommand::new(acme(), Micros::new(1), "", None, Actor::System).is_err());
    }
}
