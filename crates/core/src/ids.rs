//! Validated identifiers and counts: once constructed they cannot be wrong.

use std::fmt;

/// Longest operator-chosen identifier (account, action, tier).
pub const MAX_ID_LENGTH: usize = 64;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LENGTH: usize = 255;
/// Largest quantity of one usage event; keeps `quantity × price` far from
/// surprises while allowing any realistic batch.
pub const MAX_QUANTITY: u64 = 1_000_000_000_000;

/// Why an identifier or count was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// Empty or too long.
    #[error("{what} must be 1 to {max} characters long")]
    Length {
        /// What was being parsed.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("{what} may only contain {allowed}")]
    Characters {
        /// What was being parsed.
        what: &'static str,
        /// The allowed set, for the message.
        allowed: &'static str,
    },
    /// A quantity of zero or beyond the bound.
    #[error("quantity must be a whole number from 1 to {max}")]
    Quantity {
        /// The bound.
        max: u64,
    },
}

fn is_slug_character(character: char) -> bool {
    character.is_ascii_alphanumeric() || character == '_' || character == '-'
}

fn parse_slug(text: &str, what: &'static str) -> Result<String, InvalidId> {
    if text.is_empty() || text.len() > MAX_ID_LENGTH {
        return Err(InvalidId::Length {
            what,
            max: MAX_ID_LENGTH,
        });
    }
    if !text.chars().all(is_slug_character) {
        return Err(InvalidId::Characters {
            what,
            allowed: "letters, digits, '_' and '-'",
        });
    }
    Ok(text.to_owned())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses letters, digits, `_` and `-`, 1 to 64 characters.
            pub fn parse(text: &str) -> Result<$name, InvalidId> {
                parse_slug(text, $what).map($name)
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

slug_id!(
    /// The operator's own identifier for a customer account.
    AccountId,
    "account id"
);
slug_id!(
    /// A billable action of the price book (`email_finder`, `api`, …).
    ActionId,
    "action id"
);
slug_id!(
    /// A Spend & Save tier (`starter`, `growth`, …).
    TierId,
    "tier id"
);

/// A client-chosen key that makes a money-moving request happen at most once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses 1 to 255 printable characters.
    pub fn parse(text: &str) -> Result<IdempotencyKey, InvalidId> {
        if text.is_empty() || text.len() > MAX_IDEMPOTENCY_KEY_LENGTH {
            return Err(InvalidId::Length {
                what: "idempotency key",
                max: MAX_IDEMPOTENCY_KEY_LENGTH,
            });
        }
        if text.chars().any(char::is_control) {
            return Err(InvalidId::Characters {
                what: "idempotency key",
                allowed: "printable characters",
            });
        }
        Ok(IdempotencyKey(text.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// How many units of an action one usage event consumes: at least one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u64);

impl Quantity {
    /// One unit.
    pub const ONE: Quantity = Quantity(1);

    /// Accepts 1 to [`MAX_QUANTITY`].
    pub fn new(count: u64) -> Result<Quantity, InvalidId> {
        if count == 0 || count > MAX_QUANTITY {
            return Err(InvalidId::Quantity { max: MAX_QUANTITY });
        }
        Ok(Quantity(count))
    }

    /// The count.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_slugs() {
        assert!(AccountId::parse("acme").is_ok());
        assert!(AccountId::parse("Acme_2-x").is_ok());
        assert!(AccountId::parse(&"a".repeat(64)).is_ok());
        assert!(AccountId::parse(&"a".repeat(65)).is_err());
        assert!(AccountId::parse("").is_err());
        assert!(AccountId::parse("a b").is_err());
        assert!(AccountId::parse("a/b").is_err());
        assert!(AccountId::parse("é").is_err());
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert!(IdempotencyKey::parse("evt_123").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a\nb").is_err());
    }

    #[test]
    fn quantities_are_positive_and_bounded() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(1).is_ok());
        assert!(Quantity::new(MAX_QUANTITY).is_ok());
        assert!(Quantity::new(MAX_QUANTITY + 1).is_err());
    }
}
