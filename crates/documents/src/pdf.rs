use lopdf::content::{Content, Operation};
use lopdf::{Document, Object, Stream, dictionary, text_string};

use crate::invoice::InvoiceView;
use crate::{DocumentError, Invoice, Receipt, Summary, payment_method};

// A4 in PostScript points.
const PAGE_WIDTH: f32 = 595.0;
const PAGE_HEIGHT: f32 = 842.0;
const LEFT: f32 = 56.0;
const RIGHT: f32 = PAGE_WIDTH - LEFT;
const VALUE_X: f32 = LEFT + 120.0;
/// Room kept free for the amount column beside a line's description.
const AMOUNT_COLUMN: f32 = 140.0;

/// Renders `receipt` as a one-page A4 PDF with the same content as
/// [`render_receipt_html`](crate::render_receipt_html), set in the built-in
/// Helvetica fonts: nothing is embedded or loaded. Characters those fonts
/// cannot show (outside Windows-1252) are printed as `?`.
///
/// # Errors
/// [`DocumentError::Pdf`] when the PDF writer fails to encode the page.
pub fn render_receipt_pdf(receipt: &Receipt) -> Result<Vec<u8>, DocumentError> {
    let summary = Summary::of(receipt);
    let mut meta = vec![
        ("Receipt number", receipt.receipt_number.clone()),
        ("Date paid", summary.paid_at.clone()),
    ];
    if let Some(method) = payment_method(receipt, "ending in ") {
        meta.push(("Payment method", method));
    }
    if let Some(reference) = &receipt.payment_reference {
        meta.push(("Payment reference", reference.clone()));
    }
    let mut page = Page::default();
    let mut y = page.head(
        &receipt.issuer_name,
        "Receipt",
        summary.refund.as_ref().map(|refund| refund.status),
        &meta,
        [&receipt.account_name, &receipt.account_email, &receipt.account_id],
    );

    page.text(LABEL, LEFT, y, RIGHT - LEFT - AMOUNT_COLUMN, "DESCRIPTION");
    page.text_right(LABEL, y, "AMOUNT");
    y -= 8.0;
    page.rule(y);
    y -= 18.0;
    page.text(BODY, LEFT, y, RIGHT - LEFT - AMOUNT_COLUMN, &receipt.description);
    page.text_right(BODY, y, &summary.amount);
    y -= 10.0;
    page.rule(y);
    y -= 20.0;

    let mut totals = vec![(STRONG, "Total paid", summary.amount.as_str())];
    if let Some(refund) = &summary.refund {
        totals.push((BODY, "Refunded", refund.refunded.as_str()));
        if let Some(net) = &refund.net {
            totals.push((BODY, "Net paid", net.as_str()));
        }
    }
    if let Some(balance) = &summary.balance_after {
        totals.push((BODY, "Balance after top-up", balance.as_str()));
    }
    for (style, label, amount) in totals {
        page.text(style, LEFT, y, RIGHT - LEFT - AMOUNT_COLUMN, label);
        page.text_right(style, y, amount);
        y -= 18.0;
    }

    let footer = format!("Amounts in US dollars. Issued by {}.", receipt.issuer_name);
    page.text(LABEL, LEFT, 56.0, RIGHT - LEFT, &footer);

    let title = format!("Receipt {}", receipt.receipt_number);
    write_document(page.ops, &title, &receipt.issuer_name)
}

/// Lines one invoice page has room for; more are summed into one "more lines" row (the HTML
/// invoice lists them all).
const INVOICE_PAGE_LINES: usize = 28;

/// Renders `invoice` as a one-page A4 PDF with the content of
/// [`render_invoice_html`](crate::render_invoice_html), in the built-in Helvetica fonts.
///
/// # Errors
/// [`DocumentError::Pdf`] when the PDF writer fails to encode the page.
pub fn render_invoice_pdf(invoice: &Invoice) -> Result<Vec<u8>, DocumentError> {
    let view = InvoiceView::of(invoice);
    let mut meta = vec![
        ("Invoice number", view.number.clone()),
        ("Period", view.period.clone()),
        ("Issued", view.issued_at.clone()),
        ("Due", view.due_at.clone()),
    ];
    if let Some(paid) = &view.paid_line {
        meta.push(("Paid", paid.clone()));
    }
    let mut page = Page::default();
    let mut y = page.head(
        &view.issuer_name,
        "Invoice",
        Some(&view.status),
        &meta,
        [&view.account_name, &view.account_email, &view.account_id],
    );

    const QUANTITY_RIGHT: f32 = RIGHT - 190.0;
    const PRICE_RIGHT: f32 = RIGHT - 95.0;
    page.text(LABEL, LEFT, y, QUANTITY_RIGHT - LEFT - 70.0, "DESCRIPTION");
    page.text_right_at(LABEL, QUANTITY_RIGHT, y, "QUANTITY");
    page.text_right_at(LABEL, PRICE_RIGHT, y, "UNIT PRICE");
    page.text_right(LABEL, y, "AMOUNT");
    y -= 8.0;
    page.rule(y);
    y -= 18.0;
    let shown = view.lines.len().min(INVOICE_PAGE_LINES);
    for line in &view.lines[..shown] {
        page.text(BODY, LEFT, y, QUANTITY_RIGHT - LEFT - 70.0, &line.description);
        page.text_right_at(BODY, QUANTITY_RIGHT, y, &line.quantity);
        page.text_right_at(BODY, PRICE_RIGHT, y, &line.unit_price);
        page.text_right(BODY, y, &line.amount);
        y -= 16.0;
    }
    if view.lines.len() > shown {
        let more = format!(
            "and {} more lines (listed in the HTML invoice)",
            view.lines.len() - shown
        );
        page.text(LABEL, LEFT, y, RIGHT - LEFT, &more);
        y -= 16.0;
    }
    if view.lines.is_empty() {
        page.text(BODY, LEFT, y, RIGHT - LEFT, "No usage in this period.");
        y -= 16.0;
    }
    y += 6.0;
    page.rule(y);
    y -= 20.0;
    for total in &view.totals {
        let style = if total.strong { STRONG } else { BODY };
        page.text(style, LEFT, y, RIGHT - LEFT - AMOUNT_COLUMN, total.label);
        page.text_right(style, y, &total.amount);
        y -= 18.0;
    }
    let footer = format!("Amounts in US dollars. Issued by {}.", view.issuer_name);
    page.text(LABEL, LEFT, 56.0, RIGHT - LEFT, &footer);
    let title = format!("Invoice {}", view.number);
    write_document(page.ops, &title, &view.issuer_name)
}

fn write_document(operations: Vec<Operation>, title: &str, author: &str) -> Result<Vec<u8>, DocumentError> {
    let mut doc = Document::with_version("1.7");
    let pages_id = doc.new_object_id();
    // WinAnsiEncoding, not the fonts' StandardEncoding, so Latin-1 bytes mean Latin-1 letters.
    let font = |base: &str| {
        dictionary! { "Type" => "Font", "Subtype" => "Type1", "BaseFont" => base, "Encoding" => "WinAnsiEncoding" }
    };
    let regular = doc.add_object(font("Helvetica"));
    let bold = doc.add_object(font("Helvetica-Bold"));
    let content = doc.add_object(Stream::new(dictionary! {}, Content { operations }.encode()?));
    let page_id = doc.add_object(dictionary! {
        "Type" => "Page",
        "Parent" => pages_id,
        "Contents" => content,
        "Resources" => dictionary! { "Font" => dictionary! { Font::Regular.resource() => regular, Font::Bold.resource() => bold } },
        "MediaBox" => vec![0.into(), 0.into(), PAGE_WIDTH.into(), PAGE_HEIGHT.into()],
    });
    let pages = dictionary! { "Type" => "Pages", "Kids" => vec![page_id.into()], "Count" => 1 };
    doc.objects.insert(pages_id, Object::Dictionary(pages));
    let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    let info = doc.add_object(dictionary! {
        "Title" => text_string(title),
        "Author" => text_string(author),
        "Producer" => text_string("Tollgate"),
    });
    doc.trailer.set("Root", catalog);
    doc.trailer.set("Info", info);
    doc.compress();
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes)
        .map_err(|error| DocumentError::Pdf(error.to_string()))?;
    Ok(bytes)
}

#[derive(Clone, Copy)]
enum Font {
    Regular,
    Bold,
}

impl Font {
    fn resource(self) -> &'static str {
        match self {
            Font::Regular => "F1",
            Font::Bold => "F2",
        }
    }

    /// Width of a WinAnsi-encoded string in points. ASCII widths are the fonts'
    /// AFM metrics; other bytes are approximated, which only affects truncation.
    fn width(self, size: f32, text: &[u8]) -> f32 {
        let table = match self {
            Font::Regular => &HELVETICA_WIDTHS,
            Font::Bold => &HELVETICA_BOLD_WIDTHS,
        };
        let units: u32 = text
            .iter()
            .map(|&byte| {
                byte.checked_sub(b' ')
                    .and_then(|index| table.get(usize::from(index)))
                    .map_or(556, |&w| u32::from(w))
            })
            .sum();
        // Exact in f32: a line never reaches 2^24 thousandths of an em.
        units as f32 * size / 1000.0
    }
}

#[derive(Clone, Copy)]
struct Style {
    font: Font,
    size: f32,
    gray: f32,
}

const ISSUER: Style = Style {
    font: Font::Bold,
    size: 14.0,
    gray: 0.0,
};
const TITLE: Style = Style {
    font: Font::Bold,
    size: 26.0,
    gray: 0.0,
};
const STATUS: Style = Style {
    font: Font::Bold,
    size: 12.0,
    gray: 0.35,
};
const LABEL: Style = Style {
    font: Font::Regular,
    size: 9.0,
    gray: 0.4,
};
const BODY: Style = Style {
    font: Font::Regular,
    size: 10.5,
    gray: 0.0,
};
const STRONG: Style = Style {
    font: Font::Bold,
    size: 12.0,
    gray: 0.0,
};

#[derive(Default)]
struct Page {
    ops: Vec<Operation>,
}

impl Page {
    /// The top of a document: issuer, title (with a status at the right), the facts as
    /// label/value rows, and who is billed (name, email, account id). Returns where the
    /// body starts.
    fn head(
        &mut self,
        issuer: &str,
        title: &str,
        status: Option<&str>,
        meta: &[(&str, String)],
        billed_to: [&str; 3],
    ) -> f32 {
        let mut y = PAGE_HEIGHT - 64.0;
        self.text(ISSUER, LEFT, y, RIGHT - LEFT, issuer);
        y -= 38.0;
        self.text(TITLE, LEFT, y, RIGHT - LEFT, title);
        if let Some(status) = status {
            self.text_right(STATUS, y, status);
        }
        y -= 36.0;
        for (label, value) in meta {
            self.text(LABEL, LEFT, y, VALUE_X - LEFT, label);
            self.text(BODY, VALUE_X, y, RIGHT - VALUE_X, value);
            y -= 16.0;
        }
        y -= 18.0;
        self.text(LABEL, LEFT, y, RIGHT - LEFT, "BILLED TO");
        y -= 16.0;
        let [name, email, account_id] = billed_to;
        let account = format!("Account {account_id}");
        for line in [name, email, account.as_str()] {
            self.text(BODY, LEFT, y, RIGHT - LEFT, line);
            y -= 15.0;
        }
        y - 22.0
    }

    /// Left-aligned text, cut with "..." rather than run off the page or into the next column.
    fn text(&mut self, style: Style, x: f32, y: f32, max_width: f32, text: &str) {
        let mut bytes = win_ansi(text);
        if style.font.width(style.size, &bytes) > max_width {
            let budget = max_width - style.font.width(style.size, b"...");
            while !bytes.is_empty() && style.font.width(style.size, &bytes) > budget {
                bytes.pop();
            }
            bytes.extend_from_slice(b"...");
        }
        self.show(style, x, y, bytes);
    }

    fn text_right(&mut self, style: Style, y: f32, text: &str) {
        self.text_right_at(style, RIGHT, y, text);
    }

    /// Text ending at `right`, for a column of numbers.
    fn text_right_at(&mut self, style: Style, right: f32, y: f32, text: &str) {
        let bytes = win_ansi(text);
        let x = right - style.font.width(style.size, &bytes);
        self.show(style, x, y, bytes);
    }

    fn show(&mut self, style: Style, x: f32, y: f32, bytes: Vec<u8>) {
        self.ops.extend([
            Operation::new("BT", vec![]),
            Operation::new("g", vec![style.gray.into()]),
            Operation::new("Tf", vec![style.font.resource().into(), style.size.into()]),
            Operation::new("Td", vec![x.into(), y.into()]),
            Operation::new("Tj", vec![Object::string_literal(bytes)]),
            Operation::new("ET", vec![]),
        ]);
    }

    fn rule(&mut self, y: f32) {
        self.ops.extend([
            Operation::new("G", vec![0.8.into()]),
            Operation::new("w", vec![0.75.into()]),
            Operation::new("m", vec![LEFT.into(), y.into()]),
            Operation::new("l", vec![RIGHT.into(), y.into()]),
            Operation::new("S", vec![]),
        ]);
    }
}

/// Encodes text as Windows-1252 (PDF's WinAnsiEncoding), the only characters
/// the built-in fonts have; anything else becomes `?` instead of mojibake.
fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c {
            ' '..='~' | '\u{a0}'..='\u{ff}' => u8::try_from(u32::from(c)).unwrap_or(b'?'),
            '€' => 0x80,
            '‚' => 0x82,
            'ƒ' => 0x83,
            '„' => 0x84,
            '…' => 0x85,
            '†' => 0x86,
            '‡' => 0x87,
            'ˆ' => 0x88,
            '‰' => 0x89,
            'Š' => 0x8a,
            '‹' => 0x8b,
            'Œ' => 0x8c,
            'Ž' => 0x8e,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '•' => 0x95,
            '–' => 0x96,
            '—' => 0x97,
            '˜' => 0x98,
            '™' => 0x99,
            'š' => 0x9a,
            '›' => 0x9b,
            'œ' => 0x9c,
            'ž' => 0x9e,
            'Ÿ' => 0x9f,
            c if c.is_whitespace() || c.is_control() => b' ',
            _ => b'?',
        })
        .collect()
}

/// Helvetica advance widths for ' '..='~', in thousandths of an em (Adobe AFM).
#[rustfmt::skip]
const HELVETICA_WIDTHS: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
];

/// Helvetica-Bold advance widths for ' '..='~', in thousandths of an em (Adobe AFM).
#[rustfmt::skip]
const HELVETICA_BOLD_WIDTHS: [u16; 95] = [
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611,
    975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556,
    333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611,
    611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
];

#[cfg(test)]
mod tests {
    use tollgate_core::Micros;

    use super::*;
    use crate::tests::receipt;

    fn page_text(pdf: &[u8]) -> String {
        let doc = Document::load_mem(pdf).unwrap();
        assert_eq!(doc.get_pages().len(), 1);
        doc.extract_text(&[1]).unwrap()
    }

    #[test]
    fn is_a_complete_pdf() {
        let pdf = render_receipt_pdf(&receipt()).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        assert!(pdf.trim_ascii_end().ends_with(b"%%EOF"));
    }

    #[test]
    fn page_shows_the_receipt() {
        let text = page_text(&render_receipt_pdf(&receipt()).unwrap());
        for expected in [
            "Tollgate",
            "Receipt",
            "top_0193abc",
            "25 Nov 2026, 14:03 UTC",
            "Visa ending in 4242",
            "pi_123",
            "Ada Lovelace",
            "ada@example.com",
            "Account acc_42",
            "Balance top-up",
            "$1,234.50",
            "$1,500.00",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in {text:?}");
        }
        assert!(!text.contains("efunded"));
        assert!(!text.contains("Net paid"));
    }

    #[test]
    fn page_shows_the_amount_it_was_given_and_no_other() {
        let mut other = receipt();
        other.amount = Micros::from_cents(99_999).unwrap();
        other.receipt_number = "top_other".into();
        let text = page_text(&render_receipt_pdf(&other).unwrap());
        assert!(text.contains("$999.99"));
        assert!(text.contains("top_other"));
        assert!(!text.contains("$1,234.50"));
        assert!(!text.contains("top_0193abc"));
    }

    #[test]
    fn page_shows_refunds() {
        let mut refunded = receipt();
        refunded.refunded = Micros::from_cents(34_450).unwrap();
        let text = page_text(&render_receipt_pdf(&refunded).unwrap());
        for expected in ["Partially refunded", "Refunded", "$344.50", "Net paid", "$890.00"] {
            assert!(text.contains(expected), "missing {expected:?} in {text:?}");
        }
    }

    #[test]
    fn text_outside_the_fonts_is_replaced_not_garbled() {
        assert_eq!(
            win_ansi("Zoë • 10€ 日本\u{7}"),
            b"Zo\xeb \x95 10\x80 ?? ".to_vec()
        );
        let mut foreign = receipt();
        foreign.account_name = "Zoë 日本".into();
        let text = page_text(&render_receipt_pdf(&foreign).unwrap());
        assert!(text.contains("Zoë ??"), "{text:?}");
    }

    #[test]
    fn long_text_is_cut_to_its_column() {
        let mut long = receipt();
        long.description = "Balance top-up ".repeat(40);
        let text = page_text(&render_receipt_pdf(&long).unwrap());
        assert!(text.contains("..."));
        assert!(text.contains("$1,234.50"));
        let width = Font::Regular.width(BODY.size, &win_ansi(&long.description));
        assert!(width > RIGHT - LEFT);
    }

    #[test]
    fn widths_follow_the_font_metrics() {
        assert_eq!(Font::Regular.width(10.0, b"$1,234.50"), 44.48);
        assert_eq!(Font::Bold.width(1000.0, b"Amount"), 3777.0);
    }

    #[test]
    fn invoice_page_shows_the_invoice() {
        let invoice = crate::invoice::tests::invoice();
        let text = page_text(&render_invoice_pdf(&invoice).unwrap());
        for expected in [
            "Invoice",
            "INV-000042",
            "Open",
            "Email Finder",
            "1200",
            "$0.0085",
            "$10.20",
            "Export",
            "Credit applied",
            "Amount due",
            "$10.00",
            "Acme Corp",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in {text:?}");
        }
    }

    #[test]
    fn invoice_page_sums_up_lines_it_has_no_room_for() {
        let mut long = crate::invoice::tests::invoice();
        let line = long.lines[0].clone();
        long.lines = vec![line; INVOICE_PAGE_LINES + 5];
        let text = page_text(&render_invoice_pdf(&long).unwrap());
        assert!(text.contains("and 5 more lines"), "{text:?}");
    }
}
