//! What the page shows, computed from the store: every amount is already formatted as
//! money (from integer micro-dollars, never floats) so the templates only place text.

use time::macros::format_description;
use tollgate_core::money::{MICROS_PER_CENT, format_usd};
use tollgate_core::recharge::{AutoRechargeSettings, MIN_RECHARGE_THRESHOLD, RechargeSettingsProblem};
use tollgate_core::{InvalidTopupAmount, Micros, Timestamp, TopupLimits, TransactionKind};
use tollgate_store::{CardRecord, PageRequest, TransactionLine};

use crate::api::billing::{BillingSummary, TierList, summary, tiers};
use crate::page::PageError;
use crate::page::assets::{AssetUrls, urls};
use crate::page::chart::{ChartView, spend_chart};
use crate::page::session::PortalSession;
use crate::state::AppState;

/// Journal lines read for one page of the history (usage lines are then grouped).
pub(crate) const TRANSACTIONS_PER_PAGE: u32 = 50;

/// `$1,234.50` from the API's canonical decimal text (which always parses).
pub(crate) fn usd(text: &str) -> String {
    Micros::parse(text).map_or_else(|_| text.to_owned(), format_usd)
}

/// `+$25.00` or `−$0.03` (a real minus sign), for ledger amounts.
pub(crate) fn signed_usd(amount: Micros) -> String {
    if amount.is_negative() {
        format!("\u{2212}{}", format_usd(amount).trim_start_matches('-'))
    } else {
        format!("+{}", format_usd(amount))
    }
}

/// `12 Nov 2026, 10:00 UTC`.
pub(crate) fn date_time(at: Timestamp) -> String {
    let format = format_description!("[day padding:none] [month repr:short] [year], [hour]:[minute] UTC");
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| at.to_string())
}

/// `12 Nov 2026`.
pub(crate) fn day_month_year(at: Timestamp) -> String {
    let format = format_description!("[day padding:none] [month repr:short] [year]");
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| at.to_string())
}

/// `12 Nov`.
pub(crate) fn day_month(at: Timestamp) -> String {
    let format = format_description!("[day padding:none] [month repr:short]");
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| at.to_string())
}

fn parse_time(text: &str) -> Option<Timestamp> {
    Timestamp::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// Cents as the text an input field shows: `50.00`.
fn input_amount(amount: Micros) -> String {
    // Whole cents always (settings are whole cents); the canonical form has ≥ 2 decimals.
    amount.to_string()
}

/// How a brand is written for people.
pub(crate) fn brand_name(brand: &str) -> String {
    match brand {
        "visa" => "Visa".to_owned(),
        "mastercard" => "Mastercard".to_owned(),
        "amex" => "American Express".to_owned(),
        "discover" => "Discover".to_owned(),
        "jcb" => "JCB".to_owned(),
        "diners" => "Diners Club".to_owned(),
        "unionpay" => "UnionPay".to_owned(),
        other => {
            let mut chars = other.chars();
            chars
                .next()
                .map(|first| first.to_uppercase().chain(chars).collect())
                .unwrap_or_else(|| "Card".to_owned())
        }
    }
}

/// A message shown at the top of the page after something happened.
#[derive(Clone, Debug)]
pub(crate) struct Flash {
    /// `success`, `error` or `info` (a CSS class too).
    pub kind: &'static str,
    /// One line.
    pub title: String,
    /// What happened in detail, or what to do.
    pub detail: String,
}

impl Flash {
    /// Good news.
    pub fn success(title: impl Into<String>, detail: impl Into<String>) -> Flash {
        Flash {
            kind: "success",
            title: title.into(),
            detail: detail.into(),
        }
    }

    /// Something failed.
    pub fn error(title: impl Into<String>, detail: impl Into<String>) -> Flash {
        Flash {
            kind: "error",
            title: title.into(),
            detail: detail.into(),
        }
    }

    /// Neither.
    pub fn info(title: impl Into<String>, detail: impl Into<String>) -> Flash {
        Flash {
            kind: "info",
            title: title.into(),
            detail: detail.into(),
        }
    }

    /// Errors interrupt the screen reader; the rest wait their turn.
    pub fn role(&self) -> &'static str {
        if self.kind == "error" { "alert" } else { "status" }
    }
}

/// The saved card.
#[derive(Clone, Debug)]
pub(crate) struct CardView {
    /// `Visa`.
    pub brand: String,
    /// `4242`.
    pub last4: String,
    /// `12/34`.
    pub expiry: String,
}

impl CardView {
    fn of(card: &CardRecord) -> CardView {
        CardView {
            brand: brand_name(&card.brand),
            last4: card.last4.clone(),
            expiry: format!("{:02}/{:02}", card.exp_month, card.exp_year % 100),
        }
    }
}

/// The Buy credits dialog: limits for live validation, in integer cents, with the
/// messages the server itself would give.
#[derive(Clone, Debug)]
pub(crate) struct BuyForm {
    /// Part of the idempotency key: a double submit of this form charges once.
    pub form_key: String,
    /// Smallest top-up, cents.
    pub min_cents: i64,
    /// Largest top-up, cents.
    pub max_cents: i64,
    /// `$10.00`.
    pub min_label: String,
    /// `$10,000.00`.
    pub max_label: String,
    /// Reason shown for text that is not an amount.
    pub msg_not_a_number: String,
    /// Reason shown for more than 2 decimals.
    pub msg_decimals: String,
    /// Reason shown below the minimum.
    pub msg_below: String,
    /// Reason shown above the maximum.
    pub msg_above: String,
}

impl BuyForm {
    fn new(limits: TopupLimits) -> BuyForm {
        BuyForm {
            form_key: uuid::Uuid::now_v7().simple().to_string(),
            min_cents: limits.minimum().to_cents().unwrap_or(0),
            max_cents: limits.maximum().to_cents().unwrap_or(0),
            min_label: format_usd(limits.minimum()),
            max_label: format_usd(limits.maximum()),
            msg_not_a_number: capitalise(&InvalidTopupAmount::NotANumber.to_string()),
            msg_decimals: capitalise(&InvalidTopupAmount::TooManyDecimals.to_string()),
            msg_below: capitalise(&InvalidTopupAmount::BelowMinimum(limits.minimum()).to_string()),
            msg_above: capitalise(&InvalidTopupAmount::AboveMaximum(limits.maximum()).to_string()),
        }
    }
}

/// `The minimum top-up is $10.00`.
pub(crate) fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The Auto-recharge block and its popup.
#[derive(Clone, Debug)]
pub(crate) struct RechargeView {
    /// Whether this server can save the rule (the endpoint exists).
    pub available: bool,
    /// On or off.
    pub enabled: bool,
    /// `$50.00`, when set.
    pub threshold: Option<String>,
    /// `$100.00`, when set.
    pub target: Option<String>,
    /// The value the threshold field starts with.
    pub threshold_input: String,
    /// The value the target field starts with.
    pub target_input: String,
    /// Why the last recharge failed, for the banner.
    pub failure: Option<String>,
    /// The bank asks the customer to act (3-D Secure): replace or re-confirm the card.
    pub action_required: bool,
    /// When the rule tries again by itself after a failure (`12 Nov 2026, 11:00 UTC`).
    pub retry_at: Option<String>,
    /// The monthly cap on auto-recharged money is reached: `$5,000.00`.
    pub cap_reached: Option<String>,
    /// A recharge is being charged right now.
    pub in_progress: bool,
    /// Lowest threshold, cents.
    pub min_threshold_cents: i64,
    /// Highest threshold, cents.
    pub max_threshold_cents: i64,
    /// The minimum top-up, cents: the target is at least threshold + this.
    pub min_topup_cents: i64,
    /// The maximum top-up, cents: the highest target.
    pub max_target_cents: i64,
    /// Messages for live validation (the core's own wording).
    pub msg_not_a_number: String,
    /// See above.
    pub msg_decimals: String,
    /// `must be at least $5.00`.
    pub msg_threshold_below: String,
    /// `must be at most …`.
    pub msg_threshold_above: String,
    /// `must be at most $10,000.00`.
    pub msg_target_above: String,
}

impl RechargeView {
    fn new(summary: &BillingSummary, limits: TopupLimits, available: bool) -> RechargeView {
        let rule = &summary.auto_recharge;
        let threshold = rule
            .threshold
            .as_deref()
            .and_then(|text| Micros::parse(text).ok());
        let target = rule.target.as_deref().and_then(|text| Micros::parse(text).ok());
        let max_threshold = AutoRechargeSettings::max_threshold(limits);
        let problem = |problem: RechargeSettingsProblem| problem.to_string();
        RechargeView {
            available,
            enabled: rule.enabled,
            threshold: threshold.map(format_usd),
            target: target.map(format_usd),
            threshold_input: input_amount(threshold.unwrap_or(Micros::new(50 * 1_000_000))),
            target_input: input_amount(target.unwrap_or(Micros::new(100 * 1_000_000))),
            failure: matches!(rule.status.as_str(), "failed" | "action_required")
                .then(|| failure_reason(rule.failure_code.as_deref().unwrap_or(rule.status.as_str()))),
            action_required: rule.status == "action_required",
            retry_at: rule.retry_at.as_deref().and_then(parse_time).map(date_time),
            cap_reached: (rule.status == "cap_reached").then(|| {
                rule.monthly_cap
                    .as_deref()
                    .map_or_else(|| "the monthly cap".to_owned(), usd)
            }),
            in_progress: rule.status == "in_progress",
            min_threshold_cents: MIN_RECHARGE_THRESHOLD.get() / MICROS_PER_CENT,
            max_threshold_cents: max_threshold.get() / MICROS_PER_CENT,
            min_topup_cents: limits.minimum().get() / MICROS_PER_CENT,
            max_target_cents: limits.maximum().get() / MICROS_PER_CENT,
            msg_not_a_number: problem(RechargeSettingsProblem::NotANumber),
            msg_decimals: problem(RechargeSettingsProblem::TooManyDecimals),
            msg_threshold_below: problem(RechargeSettingsProblem::BelowMinimum(MIN_RECHARGE_THRESHOLD)),
            msg_threshold_above: problem(RechargeSettingsProblem::AboveMaximum(max_threshold)),
            msg_target_above: problem(RechargeSettingsProblem::AboveMaximum(limits.maximum())),
        }
    }
}

/// A processor's failure code in words.
pub(crate) fn failure_reason(code: &str) -> String {
    match code {
        "card_declined" | "generic_decline" => "your card was declined".to_owned(),
        "insufficient_funds" => "your card has insufficient funds".to_owned(),
        "expired_card" => "your card has expired".to_owned(),
        "authentication_required" | "action_required" => {
            "your bank asks you to confirm payments with this card".to_owned()
        }
        "no_payment_method" => "there is no card to charge".to_owned(),
        other => format!("the payment was refused ({})", other.replace('_', " ")),
    }
}

/// One action's price for this account.
#[derive(Clone, Debug)]
pub(crate) struct PriceView {
    /// `Email Finder`.
    pub name: String,
    /// `valid email found`.
    pub unit: String,
    /// List price per unit.
    pub list: String,
    /// What the account pays per unit.
    pub price: String,
    /// The price is below list (so list is shown struck through).
    pub discounted: bool,
    /// Costs nothing.
    pub free: bool,
}

/// Progress to the next tier.
#[derive(Clone, Debug)]
pub(crate) struct NextView {
    /// `Pro`.
    pub name: String,
    /// Its discount.
    pub discount_percent: u8,
    /// `$57.50`.
    pub needed: String,
    /// 0–100, of the way from the current tier's threshold to the next one's.
    pub percent: u8,
    /// `12 Dec`, when it unlocks at this cycle's pace.
    pub projection: Option<String>,
}

/// The Spend & Save block.
#[derive(Clone, Debug)]
pub(crate) struct SpendView {
    /// `Growth`.
    pub tier_name: String,
    /// The discount the account gets now.
    pub discount_percent: u8,
    /// Spent in this cycle.
    pub spent: String,
    /// `10 Nov`.
    pub cycle_start: String,
    /// `9 Dec` (the cycle's last day).
    pub cycle_end: String,
    /// Saved this cycle.
    pub savings_cycle: String,
    /// Saved over the account's life.
    pub savings_lifetime: String,
    /// Every action's price.
    pub prices: Vec<PriceView>,
    /// `None` at the top tier.
    pub next: Option<NextView>,
    /// Tiers follow lifetime spend (not the cycle's).
    pub lifetime_basis: bool,
}

/// One action's price in a tier.
#[derive(Clone, Debug)]
pub(crate) struct TierPriceView {
    /// Action name.
    pub name: String,
    /// List price.
    pub list: String,
    /// Price at this tier.
    pub price: String,
    /// Below list.
    pub discounted: bool,
    /// Costs nothing.
    pub free: bool,
}

/// One tier, as the tier browser shows it.
#[derive(Clone, Debug)]
pub(crate) struct TierCard {
    /// Position, 0 first.
    pub index: usize,
    /// `Pro`.
    pub name: String,
    /// `$500.00`.
    pub min_spend: String,
    /// Its discount.
    pub discount_percent: u8,
    /// `current`, `upcoming` or `previous`.
    pub relation: &'static str,
    /// Prices of every action.
    pub prices: Vec<TierPriceView>,
}

impl TierCard {
    /// What the badge says.
    pub fn label(&self) -> &'static str {
        match self.relation {
            "current" => "Your tier",
            "upcoming" => "Upcoming",
            _ => "Previous tier",
        }
    }
}

/// Every tier, one shown at a time.
#[derive(Clone, Debug)]
pub(crate) struct TierBrowser {
    /// All tiers, ascending.
    pub cards: Vec<TierCard>,
    /// The one shown.
    pub selected: usize,
}

impl TierBrowser {
    /// The tier shown.
    pub fn shown(&self) -> Option<&TierCard> {
        self.cards.get(self.selected)
    }

    /// The tier before the one shown.
    pub fn previous(&self) -> Option<&TierCard> {
        self.selected
            .checked_sub(1)
            .and_then(|index| self.cards.get(index))
    }

    /// The tier after the one shown.
    pub fn next(&self) -> Option<&TierCard> {
        self.cards.get(self.selected + 1)
    }

    /// `3 of 6`.
    pub fn position(&self) -> String {
        format!("{} of {}", self.selected + 1, self.cards.len())
    }
}

/// One row of the history (several usage lines of one action on one day make one row).
#[derive(Clone, Debug)]
pub(crate) struct TransactionRow {
    /// `12 Nov 2026, 10:00 UTC` (of the newest line in the row).
    pub when: String,
    /// `Usage`, `Top-up`, …
    pub kind: &'static str,
    /// `Email Finder × 15 (5 charges)`.
    pub description: String,
    /// `+$25.00` or `−$0.45`.
    pub amount: String,
    /// Money came in.
    pub credit: bool,
    /// Balance after the (newest) line.
    pub balance_after: String,
    /// The receipt, for top-ups.
    pub receipt_url: Option<String>,
}

/// A page of the history.
#[derive(Clone, Debug)]
pub(crate) struct TransactionsView {
    /// The rows, newest first.
    pub rows: Vec<TransactionRow>,
    /// The cursor of the next (older) page.
    pub older: Option<String>,
    /// This is not the first page.
    pub paged: bool,
}

fn kind_label(kind: TransactionKind) -> &'static str {
    match kind {
        TransactionKind::Usage => "Usage",
        TransactionKind::Topup => "Top-up",
        TransactionKind::AutoRecharge => "Auto-recharge",
        TransactionKind::Grant => "Credit",
        TransactionKind::Refund => "Refund",
        TransactionKind::Dispute => "Dispute",
        TransactionKind::Adjustment => "Adjustment",
        TransactionKind::InvoicePayment => "Invoice payment",
        TransactionKind::HoldPlaced => "Reserved",
        TransactionKind::HoldReleased => "Released",
    }
}

/// `("Email Finder", 3)` from a usage line's `Email Finder × 3`.
fn usage_parts(description: &str) -> Option<(&str, u64)> {
    let (name, quantity) = description.rsplit_once(" × ")?;
    Some((name, quantity.trim().parse().ok()?))
}

/// Rows from journal lines: consecutive usage lines of one action on one UTC day
/// become one row (a busy API account makes thousands of them).
pub(crate) fn group_lines(lines: &[TransactionLine]) -> Vec<TransactionRow> {
    struct Group<'a> {
        first: &'a TransactionLine,
        name: &'a str,
        quantity: u64,
        charges: u64,
        amount: Micros,
    }
    fn row(group: &Group<'_>) -> TransactionRow {
        let description = if group.charges == 1 {
            group.first.description.clone()
        } else {
            format!("{} × {} ({} charges)", group.name, group.quantity, group.charges)
        };
        TransactionRow {
            when: date_time(group.first.created_at),
            kind: kind_label(group.first.kind),
            description,
            amount: signed_usd(group.amount),
            credit: false,
            balance_after: format_usd(group.first.balances_after.total().unwrap_or(Micros::ZERO)),
            receipt_url: None,
        }
    }
    let mut rows = Vec::new();
    let mut open: Option<Group<'_>> = None;
    for line in lines {
        let usage = (line.kind == TransactionKind::Usage)
            .then(|| usage_parts(&line.description))
            .flatten();
        if let (Some(group), Some((name, quantity))) = (open.as_mut(), usage)
            && group.name == name
            && group.first.created_at.date() == line.created_at.date()
            && let (Some(total), Ok(amount)) = (
                group.quantity.checked_add(quantity),
                group.amount.checked_add(line.amount),
            )
        {
            group.quantity = total;
            group.charges += 1;
            group.amount = amount;
            continue;
        }
        if let Some(group) = open.take() {
            rows.push(row(&group));
        }
        if let Some((name, quantity)) = usage {
            open = Some(Group {
                first: line,
                name,
                quantity,
                charges: 1,
                amount: line.amount,
            });
            continue;
        }
        let receipt = matches!(line.kind, TransactionKind::Topup | TransactionKind::AutoRecharge)
            && line.amount.is_positive();
        rows.push(TransactionRow {
            when: date_time(line.created_at),
            kind: kind_label(line.kind),
            description: line.description.clone(),
            amount: signed_usd(line.amount),
            credit: line.amount.is_positive(),
            balance_after: format_usd(line.balances_after.total().unwrap_or(Micros::ZERO)),
            receipt_url: line
                .reference
                .as_ref()
                .filter(|_| receipt)
                .map(|topup| format!("/billing/receipts/{topup}")),
        });
    }
    if let Some(group) = open.take() {
        rows.push(row(&group));
    }
    rows
}

/// Everything the page shows.
#[derive(Debug)]
pub(crate) struct BillingView {
    /// Script and style URLs.
    pub assets: &'static AssetUrls,
    /// `Acme Inc.`
    pub account_name: String,
    /// `acme`.
    pub account_id: String,
    /// Sent back by every form.
    pub csrf_token: String,
    /// The backend's "Back" link.
    pub return_url: Option<String>,
    /// The message of what just happened.
    pub flash: Option<Flash>,
    /// Total balance.
    pub balance: String,
    /// Spendable now, when holds make it differ from the balance.
    pub available: Option<String>,
    /// Invoice accounts: how far below zero they may go.
    pub credit_limit: Option<String>,
    /// Card payments are configured on this server.
    pub payments_enabled: bool,
    /// The saved card.
    pub card: Option<CardView>,
    /// The Buy credits dialog.
    pub buy: BuyForm,
    /// The Auto-recharge block.
    pub recharge: RechargeView,
    /// The Spend & Save block.
    pub spend: SpendView,
    /// The tier browser.
    pub tiers: TierBrowser,
    /// The booking page of Sales.
    pub contact_sales_url: Option<String>,
    /// The history.
    pub transactions: TransactionsView,
    /// This cycle's daily spend.
    pub chart: ChartView,
    /// Invoice billing: credit used, and the invoices (invoice accounts, or any with invoices).
    pub invoicing: Option<InvoicingView>,
}

/// How many invoices the page lists (newest first).
pub(crate) const INVOICES_ON_PAGE: u32 = 12;

/// The Invoices block.
#[derive(Debug)]
pub(crate) struct InvoicingView {
    /// The account is billed by invoice now.
    pub invoice_mode: bool,
    /// What the account owes: `-balance` when below zero.
    pub credit_used: String,
    /// How far below zero it may go.
    pub credit_limit: Option<String>,
    /// Share of the limit used, 0–100, for the meter.
    pub used_percent: u8,
    /// An open invoice is past its due date: usage is blocked.
    pub overdue: bool,
    /// Newest first.
    pub invoices: Vec<InvoiceRow>,
}

/// One invoice in the list.
#[derive(Debug)]
pub(crate) struct InvoiceRow {
    pub number: String,
    pub period: String,
    pub amount_due: String,
    pub status: &'static str,
    pub status_label: &'static str,
    pub due: String,
    pub document_url: String,
}

impl InvoicingView {
    /// The block, or `None` for a prepaid account that never had an invoice.
    pub(crate) fn of(
        record: &tollgate_store::AccountRecord,
        invoices: &[tollgate_store::InvoiceRecord],
        now: tollgate_core::Timestamp,
    ) -> Option<InvoicingView> {
        let limit = record.mode.credit_limit();
        let invoice_mode = matches!(record.mode, tollgate_core::BillingMode::Invoice { .. });
        if !invoice_mode && invoices.is_empty() {
            return None;
        }
        let used = record
            .balances
            .available
            .checked_neg()
            .unwrap_or(Micros::MAX)
            .max(Micros::ZERO);
        // Integer percent of the limit, capped: no floats near money.
        let used_percent = if limit.is_positive() {
            let share = i128::from(used.get()) * 100 / i128::from(limit.get());
            u8::try_from(share.clamp(0, 100)).unwrap_or(100)
        } else {
            0
        };
        Some(InvoicingView {
            invoice_mode,
            credit_used: format_usd(used),
            credit_limit: invoice_mode.then(|| format_usd(limit)),
            used_percent,
            overdue: tollgate_core::invoice::is_overdue(record.invoice_due_at, now),
            invoices: invoices
                .iter()
                .map(|invoice| {
                    let last_day = invoice.period.end - time::Duration::microseconds(1);
                    let overdue =
                        invoice.status == tollgate_core::InvoiceStatus::Open && invoice.due_at <= now;
                    InvoiceRow {
                        number: invoice.number.to_string(),
                        period: format!(
                            "{} – {}",
                            day_month_year(invoice.period.start),
                            day_month_year(last_day)
                        ),
                        amount_due: format_usd(invoice.totals.amount_due),
                        status: if overdue { "overdue" } else { invoice.status.code() },
                        status_label: match (invoice.status, overdue) {
                            (_, true) => "Overdue",
                            (tollgate_core::InvoiceStatus::Open, false) => "Open",
                            (tollgate_core::InvoiceStatus::Paid, _) => "Paid",
                            (tollgate_core::InvoiceStatus::Void, _) => "Void",
                        },
                        due: day_month_year(invoice.due_at),
                        document_url: format!("/billing/invoices/{}", invoice.id),
                    }
                })
                .collect(),
        })
    }
}

/// What a request asks to see beyond the defaults.
#[derive(Clone, Debug, Default)]
pub(crate) struct ViewOptions {
    /// The message to show.
    pub flash: Option<Flash>,
    /// The tier to show in the browser (default: the account's).
    pub tier: Option<usize>,
    /// The history page's cursor.
    pub starting_after: Option<String>,
}

fn spend_view(summary: &BillingSummary, list: &TierList, current: usize) -> Result<SpendView, PageError> {
    let prices = summary
        .prices
        .iter()
        .map(|line| {
            let list_price = Micros::parse(&line.list_price).unwrap_or(Micros::ZERO);
            let price = Micros::parse(&line.price).unwrap_or(Micros::ZERO);
            PriceView {
                name: line.name.clone(),
                unit: line.unit.clone(),
                list: format_usd(list_price),
                price: format_usd(price),
                discounted: price < list_price,
                free: price.is_zero(),
            }
        })
        .collect();
    let next = match &summary.next_tier {
        None => None,
        Some(next) => {
            let floor = list
                .data
                .get(current)
                .and_then(|tier| Micros::parse(&tier.min_spend).ok())
                .unwrap_or(Micros::ZERO);
            let ceiling = list
                .data
                .iter()
                .find(|tier| tier.id == next.id)
                .and_then(|tier| Micros::parse(&tier.min_spend).ok())
                .unwrap_or(floor);
            let needed = Micros::parse(&next.spend_needed).unwrap_or(Micros::ZERO);
            Some(NextView {
                name: next.name.clone(),
                discount_percent: next.discount_percent,
                needed: format_usd(needed),
                percent: progress_percent(floor, ceiling, needed),
                projection: next.projected_at.as_deref().and_then(parse_time).map(day_month),
            })
        }
    };
    let cycle_start = parse_time(&summary.cycle.start)
        .map(day_month)
        .unwrap_or_default();
    // The cycle's end is the next one's first instant: people read the day before it.
    let cycle_end = parse_time(&summary.cycle.end)
        .map(|end| day_month(end - time::Duration::seconds(1)))
        .unwrap_or_default();
    Ok(SpendView {
        tier_name: summary.tier.name.clone(),
        discount_percent: summary.tier.discount_percent,
        spent: usd(&summary.cycle.spent),
        cycle_start,
        cycle_end,
        savings_cycle: usd(&summary.savings.cycle),
        savings_lifetime: usd(&summary.savings.lifetime),
        prices,
        next,
        lifetime_basis: summary.tier_basis == "lifetime",
    })
}

/// How far along from `floor` to `ceiling` an account is that still needs `needed`:
/// integer percent, 0–100 (a tier kept from the previous cycle starts at 0).
pub(crate) fn progress_percent(floor: Micros, ceiling: Micros, needed: Micros) -> u8 {
    let span = i128::from(ceiling.get()) - i128::from(floor.get());
    if span <= 0 {
        return 100;
    }
    let done = (span - i128::from(needed.get())).clamp(0, span);
    u8::try_from(done * 100 / span).unwrap_or(100)
}

fn tier_browser(
    list: &TierList,
    current: usize,
    selected: Option<usize>,
    names: &[(String, String)],
) -> TierBrowser {
    let name_of = |action: &str| {
        names
            .iter()
            .find(|(id, _)| id == action)
            .map_or_else(|| action.to_owned(), |(_, name)| name.clone())
    };
    let cards = list
        .data
        .iter()
        .enumerate()
        .map(|(index, tier)| TierCard {
            index,
            name: tier.name.clone(),
            min_spend: usd(&tier.min_spend),
            discount_percent: tier.discount_percent,
            relation: match index.cmp(&current) {
                std::cmp::Ordering::Equal => "current",
                std::cmp::Ordering::Greater => "upcoming",
                std::cmp::Ordering::Less => "previous",
            },
            prices: tier
                .prices
                .iter()
                .map(|price| {
                    let list_price = Micros::parse(&price.list_price).unwrap_or(Micros::ZERO);
                    let paid = Micros::parse(&price.price).unwrap_or(Micros::ZERO);
                    TierPriceView {
                        name: name_of(&price.action),
                        list: format_usd(list_price),
                        price: format_usd(paid),
                        discounted: paid < list_price,
                        free: paid.is_zero(),
                    }
                })
                .collect(),
        })
        .collect::<Vec<_>>();
    let last = cards.len().saturating_sub(1);
    TierBrowser {
        selected: selected.unwrap_or(current).min(last),
        cards,
    }
}

/// Loads and computes the whole page for the session's account.
pub(crate) async fn build(
    state: &AppState,
    session: &PortalSession,
    options: ViewOptions,
) -> Result<BillingView, PageError> {
    let store = state.store();
    let config = state.config();
    let now = config.clock.now();
    let record = store.account(&session.account).await?;
    let mut summary = summary(
        &record,
        &config.price_book,
        config.tier_basis,
        now,
        &config.booking_url,
    )?;
    let profile = store.payment_profile(&session.account).await?;
    let card = profile.card.as_ref().map(CardView::of);
    summary.payment_method = profile.card.as_ref().map(crate::api::json::PaymentMethod::render);
    summary.auto_recharge = crate::api::auto_recharge::auto_recharge_of(state, &session.account).await?;
    let list = tiers(&config.price_book)?;
    let current = list
        .data
        .iter()
        .position(|tier| tier.id == summary.tier.id)
        .unwrap_or(0);
    let names: Vec<(String, String)> = config
        .price_book
        .actions()
        .iter()
        .map(|action| (action.id.to_string(), action.name.clone()))
        .collect();
    let page = store
        .transactions(
            &session.account,
            PageRequest::new(TRANSACTIONS_PER_PAGE, options.starting_after.clone()),
        )
        .await?;
    let cycle = record.spend.cycle(record.anchor());
    let daily = store.daily_usage(&session.account, cycle.start).await?;
    let limits = state
        .billing()
        .map(|billing| billing.settings().topup_limits)
        .unwrap_or_default();
    let balance = crate::api::json::total(record.balances)?;
    let invoices = store
        .invoices(&session.account, PageRequest::new(INVOICES_ON_PAGE, None))
        .await?
        .data;
    let invoicing = InvoicingView::of(&record, &invoices, now);
    Ok(BillingView {
        assets: urls(),
        account_name: record.name.clone(),
        account_id: record.id.to_string(),
        csrf_token: session.csrf_token.clone(),
        return_url: session.return_url.clone(),
        flash: options.flash,
        balance: format_usd(balance),
        available: (record.balances.available != balance).then(|| format_usd(record.balances.available)),
        credit_limit: summary.credit_limit.as_deref().map(usd),
        payments_enabled: state.billing().is_some(),
        card,
        buy: BuyForm::new(limits),
        recharge: RechargeView::new(&summary, limits, state.billing().is_some()),
        spend: spend_view(&summary, &list, current)?,
        tiers: tier_browser(&list, current, options.tier, &names),
        contact_sales_url: summary.contact_sales_url.clone(),
        invoicing,
        transactions: TransactionsView {
            older: page
                .has_more
                .then(|| page.data.last().map(|line| line.id.clone()))
                .flatten(),
            rows: group_lines(&page.data),
            paged: options.starting_after.is_some(),
        },
        chart: spend_chart(cycle, &daily, &config.price_book, now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_formatted_for_people() {
        assert_eq!(usd("1234.5"), "$1,234.50");
        assert_eq!(usd("0.0045"), "$0.0045");
        assert_eq!(signed_usd(Micros::new(-30_000)), "\u{2212}$0.03");
        assert_eq!(signed_usd(Micros::new(25_000_000)), "+$25.00");
    }

    #[test]
    fn progress_is_integer_percent() {
        let d = |dollars| Micros::from_dollars(dollars).unwrap();
        assert_eq!(progress_percent(d(100), d(500), d(400)), 0);
        assert_eq!(progress_percent(d(100), d(500), d(100)), 75);
        assert_eq!(progress_percent(d(100), d(500), d(0)), 100);
        // Kept from the previous cycle: more needed than the span.
        assert_eq!(progress_percent(d(100), d(500), d(500)), 0);
    }

    #[test]
    fn brands_read_well() {
        assert_eq!(brand_name("visa"), "Visa");
        assert_eq!(brand_name("amex"), "American Express");
        assert_eq!(brand_name("elo"), "Elo");
        assert_eq!(brand_name(""), "Card");
    }

    fn line(kind: TransactionKind, description: &str, amount: i64, hour: u8) -> TransactionLine {
        let at = time::macros::datetime!(2026-11-10 00:00 UTC) + time::Duration::hours(i64::from(hour));
        TransactionLine {
            id: format!("txn_{hour}_{description}"),
            account: tollgate_core::AccountId::parse("acme").unwrap(),
            sequence: 1,
            kind,
            amount: Micros::new(amount),
            available_amount: Micros::new(amount),
            balances_after: tollgate_core::Balances {
                available: Micros::new(10_000_000),
                held: Micros::ZERO,
            },
            description: description.to_owned(),
            reference: (kind == TransactionKind::Topup).then(|| "top_1".to_owned()),
            created_at: at,
        }
    }

    #[test]
    fn usage_of_one_action_on_one_day_is_one_row() {
        use TransactionKind::{Grant, Topup, Usage};
        // Newest first, as the store lists them.
        let lines = [
            line(Usage, "Email Finder × 2", -60_000, 30),
            line(Usage, "Email Finder × 3", -90_000, 23),
            line(Usage, "Email Finder × 1", -30_000, 22),
            line(Usage, "API × 10", -200_000, 21),
            line(Topup, "Top-up (Visa •••• 4242)", 25_000_000, 20),
            line(Usage, "API × 5", -100_000, 19),
            line(Grant, "welcome", 5_000_000, 1),
        ];
        let rows = group_lines(&lines);
        let described: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|row| (row.kind, row.description.as_str(), row.amount.as_str()))
            .collect();
        assert_eq!(
            described,
            [
                ("Usage", "Email Finder × 2", "\u{2212}$0.06"),
                ("Usage", "Email Finder × 4 (2 charges)", "\u{2212}$0.12"),
                ("Usage", "API × 10", "\u{2212}$0.20"),
                ("Top-up", "Top-up (Visa •••• 4242)", "+$25.00"),
                ("Usage", "API × 5", "\u{2212}$0.10"),
                ("Credit", "welcome", "+$5.00"),
            ]
        );
        assert_eq!(rows[3].receipt_url.as_deref(), Some("/billing/receipts/top_1"));
        assert!(
            rows.iter()
                .filter(|row| row.kind != "Top-up")
                .all(|row| row.receipt_url.is_none())
        );
    }

    #[test]
    fn usage_descriptions_split() {
        assert_eq!(usage_parts("Email Finder × 3"), Some(("Email Finder", 3)));
        assert_eq!(usage_parts("Top-up"), None);
    }
}
