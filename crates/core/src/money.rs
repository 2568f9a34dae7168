//! Money as integer micro-dollars, and its exact decimal-string form.

use std::fmt;
use std::str::FromStr;

/// Micro-dollars in one US dollar.
pub const MICROS_PER_DOLLAR: i64 = 1_000_000;
/// Micro-dollars in one cent, Stripe's unit.
pub const MICROS_PER_CENT: i64 = 10_000;
/// Most decimals a money string may carry (one micro-dollar).
pub const MAX_DECIMALS: usize = 6;

/// An amount of USD in micro-dollars (1 USD = 1,000,000). Signed: ledger
/// movements and balances can be negative. All arithmetic is checked: an
/// overflow is an error, never a wrap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(i64);

/// Why a string is not an amount of money.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseMoneyError {
    /// Nothing to parse.
    #[error("amount is empty")]
    Empty,
    /// Not of the form `-?digits(.digits)?`.
    #[error("amount must be a decimal number such as \"49.99\"")]
    InvalidFormat,
    /// More than six decimals: finer than one micro-dollar.
    #[error("amount has more than 6 decimals")]
    TooManyDecimals,
    /// Does not fit in 64-bit micro-dollars.
    #[error("amount is too large")]
    OutOfRange,
}

/// An arithmetic result did not fit in 64-bit micro-dollars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("amount overflow")]
pub struct MoneyOverflow;

impl Micros {
    /// Zero dollars.
    pub const ZERO: Micros = Micros(0);
    /// The largest representable amount.
    pub const MAX: Micros = Micros(i64::MAX);

    /// Wraps a raw micro-dollar count.
    pub const fn new(micros: i64) -> Micros {
        Micros(micros)
    }

    /// Whole dollars, checked.
    pub const fn from_dollars(dollars: i64) -> Option<Micros> {
        match dollars.checked_mul(MICROS_PER_DOLLAR) {
            Some(micros) => Some(Micros(micros)),
            None => None,
        }
    }

    /// Whole cents, checked.
    pub const fn from_cents(cents: i64) -> Option<Micros> {
        match cents.checked_mul(MICROS_PER_CENT) {
            Some(micros) => Some(Micros(micros)),
            None => None,
        }
    }

    /// The raw micro-dollar count.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// True for exactly zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// True below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// True above zero.
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// Sum, or an error on overflow.
    pub fn checked_add(self, other: Micros) -> Result<Micros, MoneyOverflow> {
        self.0.checked_add(other.0).map(Micros).ok_or(MoneyOverflow)
    }

    /// Difference, or an error on overflow.
    pub fn checked_sub(self, other: Micros) -> Result<Micros, MoneyOverflow> {
        self.0.checked_sub(other.0).map(Micros).ok_or(MoneyOverflow)
    }

    /// Product with a count, or an error on overflow.
    pub fn checked_mul(self, count: u64) -> Result<Micros, MoneyOverflow> {
        let count = i64::try_from(count).map_err(|_| MoneyOverflow)?;
        self.0.checked_mul(count).map(Micros).ok_or(MoneyOverflow)
    }

    /// Negation, or an error for the one value without a positive twin.
    pub fn checked_neg(self) -> Result<Micros, MoneyOverflow> {
        self.0.checked_neg().map(Micros).ok_or(MoneyOverflow)
    }

    /// True when the amount is a whole number of cents (chargeable by card).
    pub const fn is_whole_cents(self) -> bool {
        self.0 % MICROS_PER_CENT == 0
    }

    /// Whole cents, when the amount is a whole number of cents.
    pub const fn to_cents(self) -> Option<i64> {
        if self.is_whole_cents() {
            Some(self.0 / MICROS_PER_CENT)
        } else {
            None
        }
    }

    /// Rounds up (towards +∞) to the next whole cent.
    pub fn round_up_to_cent(self) -> Result<Micros, MoneyOverflow> {
        let remainder = self.0.rem_euclid(MICROS_PER_CENT);
        if remainder == 0 {
            return Ok(self);
        }
        self.0
            .checked_add(MICROS_PER_CENT - remainder)
            .map(Micros)
            .ok_or(MoneyOverflow)
    }

    /// The smaller of two amounts.
    pub fn min(self, other: Micros) -> Micros {
        Micros(self.0.min(other.0))
    }

    /// The larger of two amounts.
    pub fn max(self, other: Micros) -> Micros {
        Micros(self.0.max(other.0))
    }

    /// Parses the API's decimal form: `-?digits(.digits{1,6})?`, nothing else
    /// (no spaces, no exponent, no `+`, no bare `.5` or `5.`).
    pub fn parse(text: &str) -> Result<Micros, ParseMoneyError> {
        if text.is_empty() {
            return Err(ParseMoneyError::Empty);
        }
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match unsigned.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (unsigned, None),
        };
        let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) {
            return Err(ParseMoneyError::InvalidFormat);
        }
        // Accumulate towards the sign, not in magnitude then negated: the
        // range is asymmetric, and `i64::MIN` (which `Display` produces) has
        // no positive twin.
        let sign: i64 = if negative { -1 } else { 1 };
        let mut micros: i64 = 0;
        for digit in whole.bytes() {
            micros = micros
                .checked_mul(10)
                .and_then(|m| m.checked_add(sign * i64::from(digit - b'0')))
                .ok_or(ParseMoneyError::OutOfRange)?;
        }
        micros = micros
            .checked_mul(MICROS_PER_DOLLAR)
            .ok_or(ParseMoneyError::OutOfRange)?;
        if let Some(fraction) = fraction {
            if !all_digits(fraction) {
                return Err(ParseMoneyError::InvalidFormat);
            }
            if fraction.len() > MAX_DECIMALS {
                return Err(ParseMoneyError::TooManyDecimals);
            }
            let mut fraction_micros: i64 = 0;
            for digit in fraction.bytes() {
                fraction_micros = fraction_micros * 10 + i64::from(digit - b'0');
            }
            for _ in fraction.len()..MAX_DECIMALS {
                fraction_micros *= 10;
            }
            micros = micros
                .checked_add(sign * fraction_micros)
                .ok_or(ParseMoneyError::OutOfRange)?;
        }
        Ok(Micros(micros))
    }

    /// Number of decimals the canonical form needs beyond the integer part
    /// (0 for whole dollars, 2 for cents, up to 6).
    pub fn significant_decimals(self) -> usize {
        let mut fraction = self.0.unsigned_abs() % MICROS_PER_DOLLAR as u64;
        if fraction == 0 {
            return 0;
        }
        let mut decimals = MAX_DECIMALS;
        while fraction.is_multiple_of(10) {
            fraction /= 10;
            decimals -= 1;
        }
        decimals
    }
}

impl fmt::Display for Micros {
    /// Canonical form: at least two decimals, trailing zeros beyond them
    /// trimmed (`49.99`, `100.00`, `0.0045`, `-0.01`).
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let magnitude = self.0.unsigned_abs();
        let whole = magnitude / MICROS_PER_DOLLAR as u64;
        let fraction = magnitude % MICROS_PER_DOLLAR as u64;
        let sign = if self.0 < 0 { "-" } else { "" };
        let decimals = self.significant_decimals().max(2);
        let shown = fraction / 10u64.pow((MAX_DECIMALS - decimals) as u32);
        write!(formatter, "{sign}{whole}.{shown:0decimals$}")
    }
}

impl FromStr for Micros {
    type Err = ParseMoneyError;

    fn from_str(text: &str) -> Result<Micros, ParseMoneyError> {
        Micros::parse(text)
    }
}

/// Formats an amount for people: `$1,234.50`, `-$0.03`, `$0.0045`.
pub fn format_usd(amount: Micros) -> String {
    let canonical = amount.to_string();
    let (sign, unsigned) = match canonical.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", canonical.as_str()),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, "00"));
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}${grouped}.{fraction}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_api_forms_exactly() {
        let cases: &[(&str, Result<i64, ParseMoneyError>)] = &[
            ("0", Ok(0)),
            ("0.000001", Ok(1)),
            ("-0.01", Ok(-10_000)),
            ("49.99", Ok(49_990_000)),
            ("0.004500", Ok(4_500)),
            ("0.0045", Ok(4_500)),
            ("100", Ok(100_000_000)),
            ("007.5", Ok(7_500_000)),
            ("-0", Ok(0)),
            ("9223372036854.775807", Ok(i64::MAX)),
            ("-9223372036854.775807", Ok(-i64::MAX)),
            ("-9223372036854.775808", Ok(i64::MIN)),
            ("-9223372036854.775809", Err(ParseMoneyError::OutOfRange)),
            ("9223372036854.775808", Err(ParseMoneyError::OutOfRange)),
            ("99999999999999999999", Err(ParseMoneyError::OutOfRange)),
            ("1.0000001", Err(ParseMoneyError::TooManyDecimals)),
            ("0.0000000", Err(ParseMoneyError::TooManyDecimals)),
            ("", Err(ParseMoneyError::Empty)),
            ("1e3", Err(ParseMoneyError::InvalidFormat)),
            (" 1", Err(ParseMoneyError::InvalidFormat)),
            ("1 ", Err(ParseMoneyError::InvalidFormat)),
            ("+1", Err(ParseMoneyError::InvalidFormat)),
            (".5", Err(ParseMoneyError::InvalidFormat)),
            ("5.", Err(ParseMoneyError::InvalidFormat)),
            ("-", Err(ParseMoneyError::InvalidFormat)),
            ("--1", Err(ParseMoneyError::InvalidFormat)),
            ("1,000", Err(ParseMoneyError::InvalidFormat)),
            ("abc", Err(ParseMoneyError::InvalidFormat)),
            ("1.2.3", Err(ParseMoneyError::InvalidFormat)),
            ("١", Err(ParseMoneyError::InvalidFormat)),
            ("NaN", Err(ParseMoneyError::InvalidFormat)),
        ];
        for (text, expected) in cases {
            assert_eq!(
                Micros::parse(text).map(Micros::get),
                *expected,
                "parsing {text:?}"
            );
        }
    }

    #[test]
    fn formats_canonically() {
        let cases: &[(i64, &str)] = &[
            (0, "0.00"),
            (1, "0.000001"),
            (-10_000, "-0.01"),
            (49_990_000, "49.99"),
            (4_500, "0.0045"),
            (100_000_000, "100.00"),
            (19_600, "0.0196"),
            (30_000, "0.03"),
            (i64::MAX, "9223372036854.775807"),
            (i64::MIN, "-9223372036854.775808"),
        ];
        for (micros, expected) in cases {
            assert_eq!(Micros::new(*micros).to_string(), *expected);
        }
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_usd(Micros::new(1_234_500_000)), "$1,234.50");
        assert_eq!(format_usd(Micros::new(-30_000)), "-$0.03");
        assert_eq!(format_usd(Micros::new(4_500)), "$0.0045");
        assert_eq!(format_usd(Micros::new(100_000_000_000)), "$100,000.00");
        assert_eq!(format_usd(Micros::ZERO), "$0.00");
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Micros::MAX.checked_add(Micros::new(1)), Err(MoneyOverflow));
        assert_eq!(Micros::new(i64::MIN).checked_neg(), Err(MoneyOverflow));
        assert_eq!(Micros::new(30_000).checked_mul(u64::MAX), Err(MoneyOverflow));
        assert_eq!(Micros::new(30_000).checked_mul(3), Ok(Micros::new(90_000)));
    }

    #[test]
    fn rounds_up_to_cents() {
        assert_eq!(Micros::new(1).round_up_to_cent(), Ok(Micros::new(10_000)));
        assert_eq!(Micros::new(10_000).round_up_to_cent(), Ok(Micros::new(10_000)));
        assert_eq!(Micros::new(-1).round_up_to_cent(), Ok(Micros::ZERO));
        assert_eq!(Micros::new(50_000_001).to_cents(), None);
        assert_eq!(Micros::new(50_000_000).to_cents(), Some(5_000));
    }

    proptest::proptest! {
        #[test]
        fn display_then_parse_round_trips(micros in proptest::num::i64::ANY) {
            let amount = Micros::new(micros);
            proptest::prop_assert_eq!(Micros::parse(&amount.to_string()), Ok(amount));
        }
    }
}
