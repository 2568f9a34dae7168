//! The invoice of an invoice-billed account's period: its facts, formatted once for both
//! renderers.

use time::OffsetDateTime;
use tollgate_core::Micros;
use tollgate_core::money::format_usd;

use crate::format_paid_at;

/// Everything an invoice shows. The caller gathers it from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invoice {
    /// `INV-000042`.
    pub number: String,
    /// Who issues the invoice (the merchant).
    pub issuer_name: String,
    /// The billed account's id.
    pub account_id: String,
    /// The billed account's display name.
    pub account_name: String,
    /// The billed account's billing email.
    pub account_email: String,
    /// First instant billed.
    pub period_start: OffsetDateTime,
    /// First instant not billed.
    pub period_end: OffsetDateTime,
    /// When the invoice was closed.
    pub issued_at: OffsetDateTime,
    /// When it must be paid by.
    pub due_at: OffsetDateTime,
    /// `open`, `paid` or `void`.
    pub status: String,
    /// The usage lines.
    pub lines: Vec<InvoiceDocumentLine>,
    /// The usage of the period.
    pub subtotal: Micros,
    /// Usage paid from the account's credit.
    pub credit_applied: Micros,
    /// Owed from before the period.
    pub brought_forward: Micros,
    /// A fraction of a cent carried to the next invoice.
    pub carried_forward: Micros,
    /// What is to be paid.
    pub amount_due: Micros,
    /// When and how it was paid (`card`, `bank transfer`, `credit`).
    pub paid: Option<(OffsetDateTime, String)>,
}

/// One usage line of an invoice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceDocumentLine {
    /// The action's name.
    pub description: String,
    /// Units.
    pub quantity: u64,
    /// Price per unit.
    pub unit_price: Micros,
    /// Amount charged.
    pub amount: Micros,
}

/// A line as shown.
pub(crate) struct LineView {
    pub description: String,
    pub quantity: String,
    pub unit_price: String,
    pub amount: String,
}

/// A totals row as shown.
pub(crate) struct TotalView {
    pub label: &'static str,
    pub amount: String,
    pub strong: bool,
}

/// The invoice's text, the same in HTML and PDF.
pub(crate) struct InvoiceView {
    pub number: String,
    pub issuer_name: String,
    pub account_id: String,
    pub account_name: String,
    pub account_email: String,
    pub status: String,
    pub paid: bool,
    pub period: String,
    pub issued_at: String,
    pub due_at: String,
    pub paid_line: Option<String>,
    pub lines: Vec<LineView>,
    pub totals: Vec<TotalView>,
}

/// `1 Nov 2026`.
fn format_day(at: OffsetDateTime) -> String {
    let full = format_paid_at(at);
    full.split(',').next().unwrap_or(&full).to_owned()
}

impl InvoiceView {
    pub(crate) fn of(invoice: &Invoice) -> InvoiceView {
        let negative = |amount: Micros| format!("-{}", format_usd(amount));
        let mut totals = vec![TotalView {
            label: "Subtotal",
            amount: format_usd(invoice.subtotal),
            strong: false,
        }];
        if invoice.credit_applied.is_positive() {
            totals.push(TotalView {
                label: "Credit applied",
                amount: negative(invoice.credit_applied),
                strong: false,
            });
        }
        if invoice.brought_forward.is_positive() {
            totals.push(TotalView {
                label: "Balance brought forward",
                amount: format_usd(invoice.brought_forward),
                strong: false,
            });
        }
        if invoice.carried_forward.is_positive() {
            totals.push(TotalView {
                label: "Under a cent, carried to the next invoice",
                amount: negative(invoice.carried_forward),
                strong: false,
            });
        }
        totals.push(TotalView {
            label: "Amount due",
            amount: format_usd(invoice.amount_due),
            strong: true,
        });
        // The period's end is exclusive; people read the last day billed.
        let last_day = invoice.period_end - time::Duration::microseconds(1);
        InvoiceView {
            number: invoice.number.clone(),
            issuer_name: invoice.issuer_name.clone(),
            account_id: invoice.account_id.clone(),
            account_name: invoice.account_name.clone(),
            account_email: invoice.account_email.clone(),
            status: match invoice.status.as_str() {
                "open" => "Open".to_owned(),
                "paid" => "Paid".to_owned(),
                "void" => "Void".to_owned(),
                other => other.to_owned(),
            },
            paid: invoice.paid.is_some(),
            period: format!("{} – {}", format_day(invoice.period_start), format_day(last_day)),
            issued_at: format_paid_at(invoice.issued_at),
            due_at: format_day(invoice.due_at),
            paid_line: invoice
                .paid
                .as_ref()
                .map(|(at, method)| format!("{} by {method}", format_paid_at(*at))),
            lines: invoice
                .lines
                .iter()
                .map(|line| LineView {
                    description: line.description.clone(),
                    quantity: line.quantity.to_string(),
                    unit_price: format_usd(line.unit_price),
                    amount: format_usd(line.amount),
                })
                .collect(),
            totals,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use time::macros::datetime;

    pub(crate) fn invoice() -> Invoice {
        Invoice {
            number: "INV-000042".into(),
            issuer_name: "Tollgate".into(),
            account_id: "acme".into(),
            account_name: "Acme Corp".into(),
            account_email: "billing@acme.test".into(),
            period_start: datetime!(2026-11-01 00:00 UTC),
            period_end: datetime!(2026-12-01 00:00 UTC),
            issued_at: datetime!(2026-12-01 00:01 UTC),
            due_at: datetime!(2026-12-31 00:01 UTC),
            status: "open".into(),
            lines: vec![
                InvoiceDocumentLine {
                    description: "Email Finder".into(),
                    quantity: 1_200,
                    unit_price: Micros::new(8_500),
                    amount: Micros::new(10_200_000),
                },
                InvoiceDocumentLine {
                    description: "Export".into(),
                    quantity: 3,
                    unit_price: Micros::new(50_000),
                    amount: Micros::new(150_000),
                },
            ],
            subtotal: Micros::new(10_350_000),
            credit_applied: Micros::new(350_000),
            brought_forward: Micros::ZERO,
            carried_forward: Micros::ZERO,
            amount_due: Micros::new(10_000_000),
            paid: None,
        }
    }

    #[test]
    fn the_view_shows_the_period_by_its_days_and_only_the_totals_that_apply() {
        let view = InvoiceView::of(&invoice());
        assert_eq!(view.period, "1 Nov 2026 – 30 Nov 2026");
        assert_eq!(view.due_at, "31 Dec 2026");
        let labels: Vec<_> = view
            .totals
            .iter()
            .map(|total| (total.label, total.amount.as_str()))
            .collect();
        assert_eq!(
            labels,
            vec![
                ("Subtotal", "$10.35"),
                ("Credit applied", "-$0.35"),
                ("Amount due", "$10.00")
            ]
        );
        assert_eq!(view.lines[0].unit_price, "$0.0085");
        assert!(view.paid_line.is_none());
    }

    #[test]
    fn a_paid_invoice_says_when_and_how() {
        let mut paid = invoice();
        paid.status = "paid".into();
        paid.paid = Some((datetime!(2026-12-05 10:30 UTC), "bank transfer".into()));
        let view = InvoiceView::of(&paid);
        assert_eq!(view.status, "Paid");
        assert_eq!(
            view.paid_line.as_deref(),
            Some("5 Dec 2026, 10:30 UTC by bank transfer")
        );
    }
}
