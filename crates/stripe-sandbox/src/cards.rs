//! Card numbers: validation, brands and Stripe's documented test-card behaviours.

use serde::Serialize;

/// How a card behaves when set up or charged, following Stripe's test cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Behavior {
    /// 4242 4242 4242 4242 and any other valid number.
    Succeeds,
    /// 4000 0000 0000 0002: `card_declined` / `generic_decline`.
    Declined,
    /// 4000 0000 0000 9995: `card_declined` / `insufficient_funds`.
    InsufficientFunds,
    /// 4000 0025 0000 3155: 3-D Secure on-session; off-session fine once set up.
    AuthOnSetup,
    /// 4000 0027 6000 3184: every payment needs authentication.
    AuthAlways,
    /// 4000 0000 0000 0341: attaches, but every charge is declined.
    AttachThenDecline,
}

impl Behavior {
    /// The behaviour of a (digits-only) card number.
    pub(crate) fn of(number: &str) -> Behavior {
        match number {
            "4000000000000002" => Behavior::Declined,
            "4000000000009995" => Behavior::InsufficientFunds,
            "4000002500003155" => Behavior::AuthOnSetup,
            "4000002760003184" => Behavior::AuthAlways,
            "4000000000000341" => Behavior::AttachThenDecline,
            _ => Behavior::Succeeds,
        }
    }

    /// Whether entering the card on a hosted page triggers a 3-D Secure challenge.
    pub(crate) fn challenges_on_session(self) -> bool {
        matches!(self, Behavior::AuthOnSetup | Behavior::AuthAlways)
    }
}

/// Why a card operation was refused, in Stripe's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decline {
    pub(crate) code: &'static str,
    pub(crate) decline_code: &'static str,
    pub(crate) message: &'static str,
}

impl Decline {
    pub(crate) const GENERIC: Decline = Decline {
        code: "card_declined",
        decline_code: "generic_decline",
        message: "Your card was declined.",
    };
    pub(crate) const INSUFFICIENT_FUNDS: Decline = Decline {
        code: "card_declined",
        decline_code: "insufficient_funds",
        message: "Your card has insufficient funds.",
    };
    pub(crate) const AUTHENTICATION_REQUIRED: Decline = Decline {
        code: "authentication_required",
        decline_code: "authentication_required",
        message: "Your card was declined. This transaction requires authentication.",
    };
}

/// The card number behind one of Stripe's test PaymentMethod ids (`pm_card_visa`, …).
pub(crate) fn test_token_number(id: &str) -> Option<&'static str> {
    Some(match id {
        "pm_card_visa" => "4242424242424242",
        "pm_card_mastercard" => "5555555555554444",
        "pm_card_amex" => "378282246310005",
        "pm_card_discover" => "6011111111111117",
        "pm_card_chargeDeclined" | "pm_card_visa_chargeDeclined" => "4000000000000002",
        "pm_card_chargeDeclinedInsufficientFunds" | "pm_card_visa_chargeDeclinedInsufficientFunds" => {
            "4000000000009995"
        }
        "pm_card_authenticationRequiredOnSetup" => "4000002500003155",
        "pm_card_authenticationRequired" => "4000002760003184",
        "pm_card_chargeCustomerFail" => "4000000000000341",
        _ => return None,
    })
}

/// Keeps only the digits of what a person typed (spaces and dashes are common).
pub(crate) fn digits(input: &str) -> String {
    input.chars().filter(char::is_ascii_digit).collect()
}

/// The Luhn checksum every real card number satisfies.
pub(crate) fn luhn_valid(number: &str) -> bool {
    if !(12..=19).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = number
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The card brand Stripe would report for a number, from its prefix.
pub(crate) fn brand(number: &str) -> &'static str {
    let prefix = |n: usize| {
        number
            .get(..n)
            .and_then(|digits| digits.parse::<u32>().ok())
            .unwrap_or(0)
    };
    match () {
        _ if number.starts_with('4') => "visa",
        _ if (51..=55).contains(&prefix(2)) || (2221..=2720).contains(&prefix(4)) => "mastercard",
        _ if matches!(prefix(2), 34 | 37) => "amex",
        _ if prefix(4) == 6011 || prefix(2) == 65 || (644..=649).contains(&prefix(3)) => "discover",
        _ if (3528..=3589).contains(&prefix(4)) => "jcb",
        _ if matches!(prefix(2), 36 | 38 | 39) || (300..=305).contains(&prefix(3)) => "diners",
        _ if prefix(2) == 62 => "unionpay",
        _ => "unknown",
    }
}

/// A stable pseudo-fingerprint so the same number always maps to the same value.
pub(crate) fn fingerprint(number: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(format!("tollgate-sandbox:{number}").as_bytes());
    hex::encode(&hash[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_brands() {
        assert!(luhn_valid("4242424242424242"));
        assert!(luhn_valid("4000002760003184"));
        assert!(luhn_valid("4000000000000341"));
        assert!(!luhn_valid("4242424242424241"));
        assert_eq!(brand("4242424242424242"), "visa");
        assert_eq!(brand("5555555555554444"), "mastercard");
        assert_eq!(brand("2223003122003222"), "mastercard");
        assert_eq!(brand("378282246310005"), "amex");
        assert_eq!(brand("6011111111111117"), "discover");
        assert_eq!(Behavior::of("4000002500003155"), Behavior::AuthOnSetup);
    }
}
