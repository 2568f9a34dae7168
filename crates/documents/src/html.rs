use askama::Template;

use crate::invoice::InvoiceView;
use crate::{Invoice, Receipt, Summary, payment_method};

/// The receipt page; askama escapes every `{{ }}` of an `.html` template, so
/// customer-provided text cannot inject markup.
#[derive(Template)]
#[template(path = "receipt.html")]
struct ReceiptPage<'a> {
    receipt: &'a Receipt,
    summary: Summary,
    payment_method: Option<String>,
}

/// Renders `receipt` as a complete, standalone, printable HTML5 document:
/// inline CSS, no scripts, no external assets. All text taken from the
/// receipt is HTML-escaped.
pub fn render_receipt_html(receipt: &Receipt) -> String {
    let page = ReceiptPage {
        receipt,
        summary: Summary::of(receipt),
        payment_method: payment_method(receipt, "\u{2022}\u{2022}\u{2022}\u{2022} "),
    };
    // Display, not `render()`: every value is a String written into a String,
    // so there is no error to report.
    page.to_string()
}

/// The invoice page, escaped like the receipt.
#[derive(Template)]
#[template(path = "invoice.html")]
struct InvoicePage {
    view: InvoiceView,
}

/// Renders `invoice` as a complete, standalone, printable HTML5 document: inline CSS, no
/// scripts, no external assets; all text taken from the invoice is HTML-escaped.
pub fn render_invoice_html(invoice: &Invoice) -> String {
    InvoicePage {
        view: InvoiceView::of(invoice),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use tollgate_core::Micros;

    use super::*;
    use crate::tests::receipt;

    #[test]
    fn shows_the_receipt() {
        let html = render_receipt_html(&receipt());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<title>Receipt top_0193abc</title>"));
        for expected in [
            "Tollgate",
            "top_0193abc",
            "25 Nov 2026, 14:03 UTC",
            "Ada Lovelace",
            "ada@example.com",
            "acc_42",
            "Balance top-up",
            "$1,234.50",
            "Visa \u{2022}\u{2022}\u{2022}\u{2022} 4242",
            "pi_123",
            "$1,500.00",
        ] {
            assert!(html.contains(expected), "missing {expected:?}");
        }
        assert!(!html.contains("<script"));
        assert!(!html.contains("http"), "no external assets");
    }

    #[test]
    fn refund_lines_only_when_refunded() {
        let html = render_receipt_html(&receipt());
        assert!(!html.contains("efunded"));
        assert!(!html.contains("Net paid"));

        let mut partial = receipt();
        partial.refunded = Micros::from_cents(34_450).unwrap();
        let html = render_receipt_html(&partial);
        assert!(html.contains("Partially refunded"));
        assert!(html.contains("$344.50"));
        assert!(html.contains("Net paid"));
        assert!(html.contains("$890.00"));

        let mut full = receipt();
        full.refunded = full.amount;
        let html = render_receipt_html(&full);
        assert!(html.contains("Refunded"));
        assert!(!html.contains("Partially"));
        assert!(html.contains("$0.00"));
    }

    #[test]
    fn optional_lines_are_left_out_when_unknown() {
        let mut bare = receipt();
        bare.card_brand = None;
        bare.card_last4 = None;
        bare.payment_reference = None;
        bare.balance_after = None;
        let html = render_receipt_html(&bare);
        assert!(!html.contains("Payment method"));
        assert!(!html.contains("Payment reference"));
        assert!(!html.contains("Balance after"));
        assert!(html.contains("$1,234.50"));
    }

    #[test]
    fn escapes_customer_text() {
        let mut hostile = receipt();
        hostile.account_name = "<script>alert(1)</script>".into();
        hostile.account_email = "\"><script>x</script>@example.com".into();
        hostile.description = "Top-up <b>&</b> 'more'".into();
        hostile.receipt_number = "top_<i>".into();
        let html = render_receipt_html(&hostile);
        assert!(!html.contains("<script"));
        assert!(!html.contains("<b>"));
        assert!(!html.contains("<i>"));
        // askama writes numeric character references.
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
        assert!(html.contains("&#34;&#62;&#60;script&#62;x"));
        assert!(html.contains("Top-up &#60;b&#62;&#38;&#60;/b&#62; &#39;more&#39;"));
        assert!(html.contains("<title>Receipt top_&#60;i&#62;</title>"));
    }

    #[test]
    fn shows_the_invoice() {
        let mut invoice = crate::invoice::tests::invoice();
        invoice.account_name = "<script>x</script>".into();
        let html = render_invoice_html(&invoice);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<title>Invoice INV-000042</title>"));
        for expected in [
            "INV-000042",
            "1 Nov 2026 – 30 Nov 2026",
            "31 Dec 2026",
            "Email Finder",
            "1200",
            "$0.0085",
            "$10.20",
            "Export",
            "Credit applied",
            "-$0.35",
            "Amount due",
            "$10.00",
            "billing@acme.test",
        ] {
            assert!(html.contains(expected), "missing {expected:?}");
        }
        assert!(!html.contains("<script"));
        assert!(!html.contains("http"), "no external assets");
    }
}
