//! Tollgate's customer-facing billing documents: the receipt of a balance top-up and the
//! invoice of an invoice-billed period, each rendered as a standalone HTML page and a PDF.
//!
//! Pure: a document is a function of the [`Receipt`] or [`Invoice`] handed in. No IO, no
//! clock, no network, no fonts or assets loaded at run time.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod html;
mod invoice;
mod pdf;

pub use html::{render_invoice_html, render_receipt_html};
pub use invoice::{Invoice, InvoiceDocumentLine};
pub use pdf::{render_invoice_pdf, render_receipt_pdf};

use time::{OffsetDateTime, UtcOffset};
use tollgate_core::Micros;
use tollgate_core::money::format_usd;

/// Everything a top-up receipt shows. The caller gathers it from the ledger
/// and the payment processor; rendering does not validate or look anything up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The receipt's number: the top-up id, e.g. `top_0193...`.
    pub receipt_number: String,
    /// Who issues the receipt (the merchant), e.g. `Tollgate`.
    pub issuer_name: String,
    /// The paying account's id.
    pub account_id: String,
    /// The paying account's display name.
    pub account_name: String,
    /// The paying account's billing email.
    pub account_email: String,
    /// The line's description, e.g. `Balance top-up` or `Auto top-up`.
    pub description: String,
    /// Amount paid: positive, whole cents.
    pub amount: Micros,
    /// Total refunded so far: zero when none, at most `amount`.
    pub refunded: Micros,
    /// When the payment succeeded; shown in UTC.
    pub paid_at: OffsetDateTime,
    /// Card brand as the processor names it, e.g. `visa`.
    pub card_brand: Option<String>,
    /// Last four digits of the card, e.g. `4242`.
    pub card_last4: Option<String>,
    /// The processor's payment id, e.g. `pi_123`.
    pub payment_reference: Option<String>,
    /// The account's balance right after the top-up was credited.
    pub balance_after: Option<Micros>,
}

/// Why a document could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The PDF writer could not encode or serialise the document.
    #[error("cannot write the PDF document: {0}")]
    Pdf(String),
}

impl From<lopdf::Error> for DocumentError {
    // A message, not the lopdf type, so the PDF library stays out of the public API.
    fn from(error: lopdf::Error) -> Self {
        DocumentError::Pdf(error.to_string())
    }
}

/// The facts both renderers show, formatted once so HTML and PDF cannot disagree.
struct Summary {
    paid_at: String,
    amount: String,
    refund: Option<RefundSummary>,
    balance_after: Option<String>,
}

struct RefundSummary {
    status: &'static str,
    refunded: String,
    /// `None` only when `amount - refunded` overflows, which a valid receipt never does.
    net: Option<String>,
}

impl Summary {
    fn of(receipt: &Receipt) -> Summary {
        let refund = receipt.refunded.is_positive().then(|| RefundSummary {
            status: if receipt.refunded >= receipt.amount {
                "Refunded"
            } else {
                "Partially refunded"
            },
            refunded: format_usd(receipt.refunded),
            net: net_paid(receipt.amount, receipt.refunded).ok().map(format_usd),
        });
        Summary {
            paid_at: format_paid_at(receipt.paid_at),
            amount: format_usd(receipt.amount),
            refund,
            balance_after: receipt.balance_after.map(format_usd),
        }
    }
}

/// What the customer kept paying after refunds.
fn net_paid(amount: Micros, refunded: Micros) -> Result<Micros, tollgate_core::MoneyOverflow> {
    amount.checked_sub(refunded)
}

/// `25 Nov 2026, 14:03 UTC`: unambiguous for every reader, whatever their locale.
fn format_paid_at(at: OffsetDateTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // Only instants at the very edge of time's range cannot move to UTC; showing
    // them in their own offset beats failing a receipt over it.
    let at = at.checked_to_offset(UtcOffset::UTC).unwrap_or(at);
    let month = MONTHS[usize::from(u8::from(at.month())) - 1];
    let zone = if at.offset().is_utc() {
        "UTC".to_owned()
    } else {
        format!("UTC{}", at.offset())
    };
    format!(
        "{} {month} {}, {:02}:{:02} {zone}",
        at.day(),
        at.year(),
        at.hour(),
        at.minute()
    )
}

/// "Visa" for `visa`: the processor's brand codes are not meant for people.
fn brand_name(code: &str) -> String {
    match code.trim().to_ascii_lowercase().as_str() {
        "visa" => "Visa".into(),
        "mastercard" => "Mastercard".into(),
        "amex" | "american_express" => "American Express".into(),
        "discover" => "Discover".into(),
        "diners" => "Diners Club".into(),
        "jcb" => "JCB".into(),
        "unionpay" => "UnionPay".into(),
        "" | "unknown" => "Card".into(),
        _ => code.trim().to_owned(),
    }
}

/// The card line, e.g. `Visa •••• 4242`; `masked` is what stands before the
/// last four digits, since the PDF's fonts lack some characters HTML has.
fn payment_method(receipt: &Receipt, masked: &str) -> Option<String> {
    fn present(field: &Option<String>) -> Option<&str> {
        field.as_deref().map(str::trim).filter(|value| !value.is_empty())
    }
    let brand = present(&receipt.card_brand).map(brand_name);
    match (brand, present(&receipt.card_last4)) {
        (Some(brand), Some(last4)) => Some(format!("{brand} {masked}{last4}")),
        (Some(brand), None) => Some(brand),
        (None, Some(last4)) => Some(format!("Card {masked}{last4}")),
        (None, None) => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    pub(crate) fn receipt() -> Receipt {
        Receipt {
            receipt_number: "top_0193abc".into(),
            issuer_name: "Tollgate".into(),
            account_id: "acc_42".into(),
            account_name: "Ada Lovelace".into(),
            account_email: "ada@example.com".into(),
            description: "Balance top-up".into(),
            amount: Micros::from_cents(123_450).unwrap(),
            refunded: Micros::ZERO,
            paid_at: datetime!(2026-11-25 15:03:09 +01:00),
            card_brand: Some("visa".into()),
            card_last4: Some("4242".into()),
            payment_reference: Some("pi_123".into()),
            balance_after: Some(Micros::from_cents(150_000).unwrap()),
        }
    }

    #[test]
    fn paid_at_is_shown_in_utc() {
        assert_eq!(
            format_paid_at(datetime!(2026-11-25 15:03:59 +01:00)),
            "25 Nov 2026, 14:03 UTC"
        );
        assert_eq!(
            format_paid_at(datetime!(2027-01-05 00:00 UTC)),
            "5 Jan 2027, 00:00 UTC"
        );
    }

    #[test]
    fn payment_method_uses_what_is_known() {
        let mut receipt = receipt();
        assert_eq!(
            payment_method(&receipt, "ending in ").as_deref(),
            Some("Visa ending in 4242")
        );
        receipt.card_brand = None;
        assert_eq!(payment_method(&receipt, "x").as_deref(), Some("Card x4242"));
        receipt.card_last4 = Some(" ".into());
        assert_eq!(payment_method(&receipt, "x"), None);
        receipt.card_brand = Some("amex".into());
        assert_eq!(payment_method(&receipt, "x").as_deref(), Some("American Express"));
    }

    #[test]
    fn refund_summary_table() {
        // (amount, refunded, status, refunded shown, net shown), in cents.
        let cases = [
            (10_000, 0, None, "", ""),
            (10_000, 2_550, Some("Partially refunded"), "$25.50", "$74.50"),
            (10_000, 9_999, Some("Partially refunded"), "$99.99", "$0.01"),
            (10_000, 10_000, Some("Refunded"), "$100.00", "$0.00"),
            (
                123_456_789,
                23_456_789,
                Some("Partially refunded"),
                "$234,567.89",
                "$1,000,000.00",
            ),
        ];
        for (amount, refunded, status, refunded_text, net_text) in cases {
            let mut receipt = receipt();
            receipt.amount = Micros::from_cents(amount).unwrap();
            receipt.refunded = Micros::from_cents(refunded).unwrap();
            let summary = Summary::of(&receipt);
            assert_eq!(summary.refund.as_ref().map(|refund| refund.status), status);
            if let Some(refund) = summary.refund {
                assert_eq!(refund.refunded, refunded_text);
                assert_eq!(refund.net.as_deref(), Some(net_text));
            }
        }
    }

    proptest! {
        #[test]
        fn net_is_amount_minus_refunded(amount in 1i64..=100_000_000_000, share in 0u32..=1000) {
            let refunded = amount * i64::from(share) / 1000;
            let mut receipt = receipt();
            receipt.amount = Micros::from_cents(amount).unwrap();
            receipt.refunded = Micros::from_cents(refunded).unwrap();
            let net = net_paid(receipt.amount, receipt.refunded).unwrap();
            prop_assert_eq!(net, Micros::from_cents(amount - refunded).unwrap());
            prop_assert_eq!(net.checked_add(receipt.refunded).unwrap(), receipt.amount);
            let summary = Summary::of(&receipt);
            match summary.refund {
                None => prop_assert_eq!(refunded, 0),
                Some(refund) => {
                    prop_assert!(refunded > 0);
                    prop_assert_eq!(refund.net, Some(format_usd(net)));
                    prop_assert_eq!(refund.status == "Refunded", refunded == amount);
                }
            }
        }
    }
}
