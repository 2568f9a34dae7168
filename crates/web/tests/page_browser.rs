//! The Billing & Usage page end to end in real headless Chromium: Tollgate serving the
//! page, the built-in Stripe sandbox's hosted pages, and the browser clicking through.
//!
//! One browser for the whole binary, the flows run in order in one test (a browser is
//! the slow part to start); each flow leaves screenshots of its states at 1280 and
//! 390 px as `NAME-1280.png` / `NAME-390.png` under the workspace's
//! `target/screenshots/` (whatever `CARGO_TARGET_DIR` is).

mod common;
mod page_support;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::TestServer;
use common::payments::{CARD_DECLINED, CARD_OK};
use page_support::{Browser, portal_link};

/// Stripe's Mastercard test number: the sandbox saves and charges it like 4242, so
/// replacing the Visa with it shows a different brand, last 4 and expiry.
const CARD_MASTERCARD: &str = "5555555555554444";

/// The account's JSON through the API, for checking what the page claims.
async fn account(server: &TestServer, id: &str) -> Value {
    server.account(id).await
}

/// Opens the account's page through a fresh portal link.
async fn open_page(browser: &Browser, server: &TestServer, account: &str) {
    browser.goto(&portal_link(server, account).await).await;
    browser.wait_for_url("/billing").await;
    browser.find("#balance-amount").await;
}

/// No card → Add → hosted page: a declined card shows the processor's error and saves
/// nothing; leaving the page changes nothing; 4242 saves the card, shown as Active.
async fn add_a_card(browser: &Browser, server: &TestServer) {
    server.funded_account("cards", "5.00").await;
    open_page(browser, server, "cards").await;
    browser
        .wait_for_text("#payment-method", "No payment method")
        .await;
    browser.screenshots("01-no-payment-method").await;

    // Declined on Stripe's page: the error is shown there and nothing is saved.
    browser.click("#add-card").await;
    browser.wait_for_url(&server.sandbox().base_url()).await;
    browser.enter_card(CARD_DECLINED).await;
    let error = browser.wait_for_text("#error", "declined").await;
    assert!(error.contains("declined"), "{error}");
    browser.screenshots("02-hosted-page-card-declined").await;
    assert!(account(server, "cards").await["payment_method"].is_null());

    // Closing the page (its Cancel link) comes back with nothing changed.
    browser.click("#cancel").await;
    browser.wait_for_url("/billing").await;
    browser.wait_for_text("#flash-message", "No changes made").await;
    browser
        .wait_for_text("#payment-method", "No payment method")
        .await;
    browser.screenshots("03-card-page-closed-nothing-changed").await;
    assert!(account(server, "cards").await["payment_method"].is_null());

    // 4242: saved, and shown at once.
    browser.click("#add-card").await;
    browser.wait_for_url(&server.sandbox().base_url()).await;
    browser.enter_card(CARD_OK).await;
    browser.wait_for_url("/billing").await;
    browser.wait_for_text("#flash-message", "Card saved").await;
    assert_eq!(browser.text("#card-status").await, "Active");
    assert!(browser.text("#card-number").await.contains("4242"));
    assert_eq!(browser.text("#card-brand").await, "Visa");
    assert_eq!(browser.text("#card-expiry").await, "Expires 12/34");
    // The one-shot message does not come back on reload: the page drops it from the URL.
    let deadline = Instant::now() + Duration::from_secs(5);
    while browser.url().await.contains("payment_method=") {
        assert!(Instant::now() < deadline, "{}", browser.url().await);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    browser.screenshots("04-card-active").await;
    assert_eq!(account(server, "cards").await["payment_method"]["last4"], "4242");

    // Edit, then close Stripe's page: the card stays.
    browser.click("#edit-card").await;
    browser.wait_for_url(&server.sandbox().base_url()).await;
    browser.click("#cancel").await;
    browser.wait_for_url("/billing").await;
    browser.wait_for_text("#flash-message", "No changes made").await;
    assert!(browser.text("#card-number").await.contains("4242"));

    // Edit with another card: back on the page, the new one is the Active card at once
    // (brand, last 4 and expiry all replaced), and it is the one the account now holds.
    browser.click("#edit-card").await;
    browser.wait_for_url(&server.sandbox().base_url()).await;
    browser.enter_card_expiring(CARD_MASTERCARD, "08 / 31").await;
    browser.wait_for_url("/billing").await;
    let saved = browser.wait_for_text("#flash-message", "Card saved").await;
    assert!(saved.contains("Mastercard card ending in 4444"), "{saved}");
    assert_eq!(browser.text("#card-status").await, "Active");
    assert_eq!(browser.text("#card-brand").await, "Mastercard");
    let number = browser.text("#card-number").await;
    assert!(number.contains("4444") && !number.contains("4242"), "{number}");
    assert_eq!(browser.text("#card-expiry").await, "Expires 08/31");
    browser.screenshots("04b-card-replaced").await;
    let card = account(server, "cards").await["payment_method"].clone();
    assert_eq!(
        (card["brand"].as_str(), card["last4"].as_str()),
        (Some("mastercard"), Some("4444")),
        "{card}"
    );
}

/// Types `amount`, waits until the page's validation shows `reason` (none: an empty
/// message), and returns (Continue disabled, the message shown).
async fn continue_disabled_for(browser: &Browser, amount: &str, reason: &str) -> (bool, String) {
    browser.type_into("#topup-amount", amount).await;
    let shown = browser
        .wait_for_text_where("#topup-error", &format!("{reason:?}"), |text| {
            if reason.is_empty() {
                text.is_empty()
            } else {
                text.contains(reason)
            }
        })
        .await;
    (browser.is_disabled("#topup-continue").await, shown)
}

/// Buy credits with the saved card: Continue stays disabled (with the reason) until the
/// amount is valid; paying shows the new balance and a success message in place.
async fn buy_credits_with_the_card(browser: &Browser, server: &TestServer) {
    browser.click("#buy-credits").await;
    browser.find("#buy-dialog[open]").await;
    // Each refusal photographed with its reason showing and Continue disabled.
    let cases = [
        ("", "", "05a-buy-credits-empty"),
        (
            "5",
            "The minimum top-up is $10.00",
            "05b-buy-credits-below-minimum",
        ),
        (
            "10.001",
            "Use at most 2 decimals",
            "05c-buy-credits-too-many-decimals",
        ),
        (
            "abc",
            "Enter an amount in dollars",
            "05d-buy-credits-not-a-number",
        ),
        (
            "20000",
            "The maximum top-up is $10,000.00",
            "05e-buy-credits-above-maximum",
        ),
    ];
    for (amount, reason, screenshot) in cases {
        let (disabled, shown) = continue_disabled_for(browser, amount, reason).await;
        assert!(disabled, "Continue must stay disabled for {amount:?}");
        assert!(
            shown.contains(reason),
            "for {amount:?} the page says {shown:?}, not {reason:?}"
        );
        let invalid = browser.attr("#topup-amount", "aria-invalid").await;
        assert_eq!(
            invalid.as_deref(),
            (!reason.is_empty()).then_some("true"),
            "highlight for {amount:?}"
        );
        browser.screenshots_of_screen(screenshot).await;
    }
    let (disabled, shown) = continue_disabled_for(browser, "25", "").await;
    assert!(!disabled && shown.is_empty(), "25 is valid: {shown:?}");
    browser.screenshots_of_screen("06-buy-credits-valid-amount").await;
    browser.click("#topup-continue").await;
    assert_eq!(browser.text("#topup-confirm-amount").await, "$25.00");
    // The card that replaced the Visa is the one charged.
    let confirm = browser.text("#topup-confirm-text").await;
    assert!(confirm.contains("Mastercard card ending in 4444"), "{confirm}");
    browser.screenshots_of_screen("07-buy-credits-confirm").await;
    browser.click("#topup-pay").await;
    browser.wait_for_text("#flash-message", "Payment received").await;
    let message = browser.text("#flash-message").await;
    assert!(
        message.contains("charged to your Mastercard card ending in 4444")
            && message.contains("Your balance is now $30.00"),
        "{message}"
    );
    assert_eq!(browser.text("#balance-amount").await, "$30.00");
    assert!(!browser.exists("#buy-dialog[open]").await, "the dialog closed");
    let receipt = browser
        .attr(".receipt-link", "href")
        .await
        .expect("a receipt link");
    assert!(receipt.starts_with("/billing/receipts/top_"), "{receipt}");
    browser.screenshots("08-buy-credits-paid").await;
    assert_eq!(account(server, "cards").await["balance"], "30.00");
    // The receipt opens for this session (and only its own account's).
    browser.goto(&server.url(&receipt)).await;
    browser.wait_for_text("body", "25.00").await;
    browser.goto(&server.url("/billing")).await;
    browser.find("#balance-amount").await;
}

/// Without a card, Buy credits goes through the hosted payment page, which saves the card.
async fn buy_credits_without_a_card(browser: &Browser, server: &TestServer) {
    server.create_account("newcomer").await;
    open_page(browser, server, "newcomer").await;
    browser.click("#buy-credits").await;
    browser.find("#buy-dialog[open]").await;
    assert!(browser.text("#topup-needs-card").await.contains("no card yet"));
    browser.type_into("#topup-amount", "40").await;
    browser.click("#topup-continue").await;
    browser.click("#topup-pay").await;
    browser.wait_for_url(&server.sandbox().base_url()).await;
    browser.wait_for_text("#amount", "$40.00").await;
    browser.screenshots("09-hosted-payment-page").await;
    browser.enter_card(CARD_OK).await;
    browser.wait_for_url("/billing").await;
    browser.wait_for_text("#flash-message", "Payment received").await;
    assert!(browser.text("#flash-message").await.contains("$40.00"));
    assert_eq!(browser.text("#balance-amount").await, "$40.00");
    assert!(
        browser.text("#card-number").await.contains("4242"),
        "the card was saved"
    );
    browser.screenshots("10-paid-on-hosted-page").await;
}

/// Spend & Save: the current tier, prices with list struck through, progress, and the
/// tier browser both ways; then an upgrade after usage through the API.
async fn spend_and_save(browser: &Browser, server: &TestServer) {
    server.funded_account("spender", "1000.00").await;
    for (index, quantity) in [(1, 2_000), (2, 2_000)] {
        let (status, body) = server
            .usage("spender", "email_finder", quantity, &format!("evt_{index}"))
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    }
    open_page(browser, server, "spender").await;
    // $60 + $60: the second charge crosses into Growth (and is priced at Starter).
    assert_eq!(browser.text("#current-tier").await, "Growth");
    assert_eq!(browser.text("#current-discount").await, "10%");
    assert_eq!(browser.text("#cycle-spent").await, "$120.00");
    let prices = browser.text("#prices").await;
    for name in ["Email Finder", "Email Validation", "Export", "UI Search", "API"] {
        assert!(prices.contains(name), "{name} missing: {prices}");
    }
    assert!(
        browser.exists("#prices s.list-price").await,
        "list prices are struck through"
    );
    assert!(browser.text("#next-tier-text").await.contains("to Pro"));
    let progress = browser.attr("#next-tier svg", "aria-valuenow").await.unwrap();
    assert!(progress.parse::<u8>().unwrap() < 100, "{progress}");
    assert!(browser.text("#projection").await.contains("Pro"));
    assert_eq!(browser.text("#tier-shown-label").await, "Your tier");
    // Both charges were priced at Starter, which is list price (the one that crossed
    // into Growth too): nothing saved yet.
    assert_eq!(browser.text("#savings-cycle").await, "$0.00");
    assert_eq!(browser.text("#savings-lifetime").await, "$0.00");
    browser.screenshots("11-spend-and-save").await;

    // Browse up to the last tier…
    let mut seen = vec![browser.text("#tier-shown-name").await];
    while browser.attr("#tier-next", "aria-disabled").await.is_none() {
        let before = browser.text("#tier-shown-name").await;
        browser.click("#tier-next").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while browser.text("#tier-shown-name").await == before {
            assert!(Instant::now() < deadline, "the next tier never showed");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert_eq!(browser.text("#tier-shown-label").await, "Upcoming");
        seen.push(browser.text("#tier-shown-name").await);
    }
    assert_eq!(seen, ["Growth", "Pro", "Scale", "Business", "Enterprise"]);
    assert!(browser.text("#tier-shown").await.contains("60% off"));
    browser.screenshots("12-tier-browser-upcoming").await;
    // …and back down to the first, past the account's own.
    while browser.attr("#tier-prev", "aria-disabled").await.is_none() {
        let before = browser.text("#tier-shown-name").await;
        browser.click("#tier-prev").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while browser.text("#tier-shown-name").await == before {
            assert!(Instant::now() < deadline, "the previous tier never showed");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    assert_eq!(browser.text("#tier-shown-name").await, "Starter");
    assert_eq!(browser.text("#tier-shown-label").await, "Previous tier");
    browser.screenshots("13-tier-browser-previous").await;

    // The chart shows this cycle's spend.
    assert!(browser.exists("#chart-svg rect.bar").await);
    // An upgrade through the API shows at the next load.
    let (status, body) = server.usage("spender", "email_finder", 15_000, "evt_3").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    browser.client.refresh().await.expect("reload");
    browser.wait_for_text("#current-tier", "Pro").await;
    assert_eq!(browser.text("#current-discount").await, "20%");
    // 15,000 at Growth's $0.027 instead of the $0.030 list price: $405.00 paid, $45.00
    // saved, all of it this cycle.
    assert_eq!(browser.text("#cycle-spent").await, "$525.00");
    assert_eq!(browser.text("#savings-cycle").await, "$45.00");
    assert_eq!(browser.text("#savings-lifetime").await, "$45.00");
    browser.screenshots("14-upgraded-to-pro").await;
}

/// Savings this cycle and in total part ways at a new cycle: a server of its own whose
/// clock can move a month on (the payments server's clock must stay near the real one,
/// which the sandbox's webhook signatures are checked against).
async fn savings_across_cycles(browser: &Browser) {
    let server = TestServer::start().await;
    server.funded_account("saver", "1000.00").await;
    // Cycle 1 (from 10 Nov): $120.00 at Starter crosses into Growth, saving nothing;
    // then 1,000 at Growth's $0.027: $27.00 paid, $3.00 saved.
    for (quantity, key) in [(4_000, "c1-a"), (1_000, "c1-b")] {
        let (status, body) = server.usage("saver", "email_finder", quantity, key).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    }
    // Cycle 2: Growth is kept for the cycle after the one that earned it, so 2,000 more
    // are $54.00 at $0.027, saving $6.00.
    server.clock.advance(time::Duration::days(31));
    let (status, body) = server.usage("saver", "email_finder", 2_000, "c2-a").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["savings"], "6.00", "{body}");
    open_page(browser, &server, "saver").await;
    assert_eq!(browser.text("#current-tier").await, "Growth");
    assert_eq!(browser.text("#cycle-spent").await, "$54.00");
    assert_eq!(browser.text("#savings-cycle").await, "$6.00");
    assert_eq!(browser.text("#savings-lifetime").await, "$9.00");
    browser.screenshots("14b-savings-across-cycles").await;
    server.assert_ledger_clean().await;
}

/// The history pages 50 lines at a time: 55 credits over the API make two pages; Older
/// swaps in the 5 oldest (and only they), Newest brings the first page back.
async fn transaction_pages(browser: &Browser, server: &TestServer) {
    server.create_account("history").await;
    for index in 0..55 {
        let (status, body) = server
            .send(
                server
                    .request(reqwest::Method::POST, "/v1/accounts/history/grants")
                    .header("Idempotency-Key", format!("history-{index}"))
                    .json(&serde_json::json!({"amount": "1.00", "reason": format!("credit number {index}")})),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    }
    // Newest first: credits 54 … 5 on the first page, 4 … 0 on the second.
    let credits = |range: std::ops::RangeInclusive<u32>| -> Vec<String> {
        range
            .rev()
            .map(|index| format!("credit number {index}"))
            .collect()
    };
    let descriptions = "#transactions-table td[data-label=Description]";
    let balances = "#transactions-table td[data-label='Balance after']";
    open_page(browser, server, "history").await;
    assert_eq!(browser.texts(descriptions).await, credits(5..=54));
    assert_eq!(
        browser.texts(balances).await.first().map(String::as_str),
        Some("$55.00")
    );
    assert!(browser.exists("#transactions-older").await);
    assert!(
        !browser.exists("#transactions-newest").await,
        "the first page has no way back"
    );
    browser.screenshots("22-transactions-first-page").await;

    browser.click("#transactions-older").await;
    // Only the second page has Newest: its appearance is the swap.
    browser.find("#transactions-newest").await;
    assert_eq!(browser.texts(descriptions).await, credits(0..=4));
    assert_eq!(
        browser.texts(balances).await.last().map(String::as_str),
        Some("$1.00")
    );
    assert!(
        !browser.exists("#transactions-older").await,
        "nothing older than the first credit"
    );
    browser.screenshots("23-transactions-older-page").await;

    browser.click("#transactions-newest").await;
    browser.find("#transactions-older").await;
    assert_eq!(browser.texts(descriptions).await, credits(5..=54));
    assert!(!browser.exists("#transactions-newest").await);
}

/// Waits until the test server's auto-recharge worker has brought the balance to `balance`.
async fn wait_for_balance(server: &TestServer, id: &str, balance: &str) {
    server
        .wait_for_account(id, &format!("a balance of {balance}"), |account| {
            account["balance"] == balance
        })
        .await;
}

/// Types into one of the popup's fields, waits until its error element shows `reason`
/// (none: empty), and returns (Save disabled, the field's error).
async fn recharge_field(
    browser: &Browser,
    field: &str,
    value: &str,
    error: &str,
    reason: &str,
) -> (bool, String) {
    browser.type_into(field, value).await;
    let shown = browser
        .wait_for_text_where(error, &format!("{reason:?}"), |text| {
            if reason.is_empty() {
                text.is_empty()
            } else {
                text.contains(reason)
            }
        })
        .await;
    (browser.is_disabled("#recharge-save").await, shown)
}

/// Auto-recharge: off → Enable → the popup validates live → Save shows the banner; Edit
/// changes it; usage through the API below the threshold recharges (the worker's pass)
/// and the page shows the recharge and the refilled balance; the toggle switches it off.
async fn auto_recharge(browser: &Browser, server: &TestServer) {
    // The "cards" account: the Mastercard ending in 4444 and $30.00.
    open_page(browser, server, "cards").await;
    assert_eq!(browser.text("#recharge-banner").await, "Auto-recharge off");
    browser.click("#enable-recharge").await;
    browser.find("#recharge-dialog[open]").await;
    let (threshold, target) = ("#recharge-threshold", "#recharge-target");
    let (threshold_error, target_error) = ("#threshold-error", "#target-error");
    let (disabled, _) =
        recharge_field(browser, threshold, "4", threshold_error, "Must be at least $5.00").await;
    assert!(disabled, "Save stays disabled for a $4 threshold");
    let (disabled, _) = recharge_field(
        browser,
        threshold,
        "20.555",
        threshold_error,
        "at most 2 decimals",
    )
    .await;
    assert!(disabled, "Save stays disabled for a threshold with 3 decimals");
    recharge_field(browser, threshold, "20", threshold_error, "").await;
    let (disabled, _) = recharge_field(browser, target, "25", target_error, "Must be at least $30.00").await;
    assert!(
        disabled,
        "Save stays disabled for a target under threshold + minimum"
    );
    assert_eq!(
        browser.attr("#recharge-target", "aria-invalid").await.as_deref(),
        Some("true")
    );
    browser.screenshots_of_screen("16-auto-recharge-invalid").await;
    let (disabled, _) = recharge_field(browser, target, "100", target_error, "").await;
    assert!(!disabled, "$20 → $100 is valid");
    browser.type_into("#recharge-threshold", "50").await;
    assert!(!browser.is_disabled("#recharge-save").await);
    browser.screenshots_of_screen("17-auto-recharge-popup").await;
    browser.click("#recharge-save").await;
    browser.wait_for_text("#flash-message", "Auto-recharge on").await;
    assert_eq!(
        browser.text("#recharge-banner").await,
        "Auto-recharge on \u{2014} when balance goes below $50.00, top up to $100.00"
    );
    browser.screenshots("18-auto-recharge-on").await;
    // $30.00 is below the new $50.00 threshold: the test server's worker tops up to $100.00.
    wait_for_balance(server, "cards", "100.00").await;

    // Edit: the banner follows at once.
    browser.click("#edit-recharge").await;
    browser.find("#recharge-dialog[open]").await;
    browser.type_into("#recharge-threshold", "20").await;
    browser.type_into("#recharge-target", "80").await;
    browser.click("#recharge-save").await;
    browser
        .wait_for_text("#recharge-banner", "below $20.00, top up to $80.00")
        .await;
    assert_eq!(
        browser.text("#recharge-banner").await,
        "Auto-recharge on \u{2014} when balance goes below $20.00, top up to $80.00"
    );
    browser.screenshots("18b-auto-recharge-edited").await;
    let rule = account(server, "cards").await["auto_recharge"].clone();
    assert_eq!(
        (rule["threshold"].as_str(), rule["target"].as_str()),
        (Some("20.00"), Some("80.00")),
        "{rule}"
    );

    // Usage through the API takes the balance below $20.00 ($100 − 2,700 × $0.03 = $19):
    // the worker recharges $61.00, back to $80.00.
    let (status, body) = server.usage("cards", "email_finder", 2_700, "recharge-1").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["balance"], "19.00");
    wait_for_balance(server, "cards", "80.00").await;
    browser.client.refresh().await.expect("reload");
    browser.wait_for_text("#balance-amount", "$80.00").await;
    let history = browser.text("#transactions-table").await;
    assert!(
        history.contains("Auto-recharge") && history.contains("+$61.00"),
        "{history}"
    );
    browser.screenshots("19-auto-recharged").await;

    // The toggle switches it off.
    browser.click("#edit-recharge").await;
    browser.find("#recharge-dialog[open]").await;
    browser.click("#recharge-dialog .switch").await;
    assert!(browser.is_disabled("#recharge-threshold").await);
    assert_eq!(browser.text("#recharge-save").await, "Switch off");
    browser.click("#recharge-save").await;
    browser
        .wait_for_text("#recharge-banner", "Auto-recharge off")
        .await;
    assert_eq!(account(server, "cards").await["auto_recharge"]["enabled"], false);
    browser.screenshots("20-auto-recharge-off").await;
}

/// A recharge the card refuses leaves a banner that says why and what to do.
async fn failed_auto_recharge(browser: &Browser, server: &TestServer) {
    server.funded_account("refused", "12.00").await;
    open_page(browser, server, "refused").await;
    browser.click("#add-card").await;
    browser.wait_for_url(&server.sandbox().base_url()).await;
    browser.enter_card(common::payments::CARD_ATTACH_THEN_FAIL).await;
    browser.wait_for_text("#flash-message", "Card saved").await;
    browser.click("#enable-recharge").await;
    browser.find("#recharge-dialog[open]").await;
    browser.type_into("#recharge-threshold", "10").await;
    browser.type_into("#recharge-target", "50").await;
    browser.click("#recharge-save").await;
    browser
        .wait_for_text("#recharge-banner", "Auto-recharge on")
        .await;
    let (status, body) = server.usage("refused", "email_finder", 100, "refused-1").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    server
        .wait_for_account("refused", "the failed recharge", |account| {
            account["auto_recharge"]["status"] == "failed"
        })
        .await;
    browser.client.refresh().await.expect("reload");
    let banner = browser
        .wait_for_text("#recharge-failed", "The last auto-recharge failed")
        .await;
    assert!(
        banner.contains("declined") && banner.contains("Update your card"),
        "{banner}"
    );
    browser.screenshots("21-auto-recharge-failed").await;
}

/// Contact Sales opens the configured booking page in a new tab.
async fn contact_sales(browser: &Browser) {
    let link = "#contact-sales-link";
    assert_eq!(browser.attr(link, "target").await.as_deref(), Some("_blank"));
    assert_eq!(browser.attr(link, "rel").await.as_deref(), Some("noopener"));
    assert_eq!(
        browser.attr(link, "href").await.as_deref(),
        Some("https://calendly.example/sales")
    );
    let main = browser.client.window().await.expect("window");
    let before = browser.client.windows().await.expect("windows").len();
    browser.click(link).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let tabs = loop {
        let tabs = browser.client.windows().await.expect("windows");
        if tabs.len() > before {
            break tabs;
        }
        assert!(Instant::now() < deadline, "no new tab opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tab = tabs.into_iter().find(|tab| *tab != main).expect("the new tab");
    browser
        .client
        .switch_to_window(tab)
        .await
        .expect("switch to the tab");
    // There is no internet here: the tab's address is what counts, not its content.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let opened = browser
            .script("return window.location.href;")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let url = browser.url().await;
        if url.starts_with("https://calendly.example/sales")
            || opened.starts_with("https://calendly.example/sales")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the new tab is at {url} / {opened}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.client.close_window().await.expect("close the tab");
    browser
        .client
        .switch_to_window(main)
        .await
        .expect("back to the page");
}

/// A used link and an expired one both land on the explanation, never on a page.
async fn refused_links(browser: &Browser) {
    let server = TestServer::start().await;
    server.create_account("late").await;
    let link = portal_link(&server, "late").await;
    browser.goto(&link).await;
    browser.wait_for_url("/billing").await;
    browser.find("#balance-amount").await;
    // Used again (say, from the browser's history): refused.
    browser.goto(&link).await;
    browser.wait_for_text("h1", "This billing link has expired").await;
    assert!(browser.text("#error-message").await.contains("ask for a new one"));
    browser.screenshots("15-link-used-twice").await;
    // Never used, but more than 5 minutes old: refused.
    let stale = portal_link(&server, "late").await;
    server.clock.advance(time::Duration::minutes(6));
    browser.goto(&stale).await;
    browser.wait_for_text("h1", "This billing link has expired").await;
    assert!(browser.text("#error-message").await.contains("ask for a new one"));
    assert!(!browser.exists("#balance-amount").await, "no page behind it");
    browser.screenshots("15b-link-expired").await;
}

/// An invoice account (set up by Sales): the page shows invoice mode and the credit used;
/// at the cycle end its invoice is listed, opens as a document, turns Overdue past its
/// terms (usage paused, said so), and Paid once the operator marks it paid.
async fn invoice_billing(browser: &Browser) {
    let server = TestServer::start().await;
    server.create_account("bigco").await;
    let (status, plan) = server
        .send(
            server
                .request(reqwest::Method::PUT, "/v1/accounts/bigco/plan")
                .json(
                    &serde_json::json!({"billing_mode": "invoice", "credit_limit": "100.00",
                                           "prices": {"export": "0.05"}, "net_terms_days": 14}),
                ),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{plan}");
    assert_eq!(
        server.usage("bigco", "export", 500, "x1").await.0,
        reqwest::StatusCode::OK
    );
    open_page(browser, &server, "bigco").await;
    browser.wait_for_text("#invoice-mode", "Invoice billing").await;
    browser
        .wait_for_text("#credit-used-text", "$25.00 of $100.00 credit used")
        .await;
    assert_eq!(
        browser.attr("#credit-used svg", "aria-valuenow").await.as_deref(),
        Some("25")
    );
    browser.wait_for_text("#no-invoices", "No invoices yet").await;
    browser.screenshots("30-invoice-mode").await;

    server.clock.advance(time::Duration::days(32));
    assert_eq!(
        tollgate_web::close_due_invoices(server.store.as_ref())
            .await
            .unwrap(),
        1
    );
    open_page(browser, &server, "bigco").await;
    let row = browser.wait_for_text("#invoice-list", "INV-000001").await;
    assert!(row.contains("$25.00") && row.contains("Open"), "{row}");
    browser.screenshots("31-invoice-open").await;
    for width in page_support::WIDTHS {
        browser.set_viewport(width, 900).await;
        assert!(
            !browser.overflows_horizontally().await,
            "the invoice list scrolls sideways at {width} px"
        );
    }
    browser.set_viewport(page_support::WIDTHS[0], 900).await;

    // Past the terms: refused over the API, and the page says why.
    server.clock.advance(time::Duration::days(15));
    assert_eq!(
        server.usage("bigco", "export", 1, "x2").await.0,
        reqwest::StatusCode::PAYMENT_REQUIRED
    );
    open_page(browser, &server, "bigco").await;
    browser.wait_for_text("#invoice-overdue", "usage is paused").await;
    browser.wait_for_text("#invoice-list", "Overdue").await;
    browser.screenshots("32-invoice-overdue").await;

    // The document opens from the list, for this account only.
    let href = browser
        .attr("#invoice-list a.invoice-number", "href")
        .await
        .expect("a link");
    let url = if href.starts_with('/') {
        server.url(&href)
    } else {
        href.clone()
    };
    browser.goto(&url).await;
    browser.wait_for_text("body", "Amount due").await;
    assert!(browser.body_text().await.contains("INV-000001"));
    browser.screenshots("33-invoice-document").await;

    let invoice_id = href.rsplit('/').next().unwrap().to_owned();
    let (status, paid) = server
        .post(
            &format!("/v1/invoices/{invoice_id}/mark_paid"),
            serde_json::json!({"reference": "WIRE-1"}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{paid}");
    open_page(browser, &server, "bigco").await;
    browser.wait_for_text("#invoice-list", "Paid").await;
    assert!(!browser.exists("#invoice-overdue").await);
    browser
        .wait_for_text("#credit-used-text", "$0.00 of $100.00 credit used")
        .await;
    browser.screenshots("34-invoice-paid").await;
    server.assert_ledger_clean().await;
}

/// Both widths fit without sideways scrolling, and the page works by keyboard alone.
async fn layout_and_keyboard(browser: &Browser) {
    for width in page_support::WIDTHS {
        browser.set_viewport(width, 900).await;
        let inner = browser.script("return window.innerWidth;").await;
        assert_eq!(inner, width, "the viewport is {width} px wide");
        assert!(
            !browser.overflows_horizontally().await,
            "the page scrolls sideways at {width} px"
        );
    }
    browser.set_viewport(page_support::WIDTHS[0], 900).await;
    // Buy credits opens from the keyboard, takes focus, and Escape closes it.
    browser
        .script("document.getElementById('buy-credits').focus();")
        .await;
    browser
        .find("#buy-credits")
        .await
        .send_keys("\u{E007}")
        .await
        .expect("Enter");
    browser.find("#buy-dialog[open]").await;
    let focused = browser.script("return document.activeElement.id;").await;
    assert_eq!(focused, "topup-amount");
    browser
        .find("#topup-amount")
        .await
        .send_keys("\u{E00C}")
        .await
        .expect("Escape");
    let deadline = Instant::now() + Duration::from_secs(5);
    while browser.exists("#buy-dialog[open]").await {
        assert!(Instant::now() < deadline, "Escape did not close the dialog");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billing_page_in_headless_chromium() {
    let started = Instant::now();
    let server = TestServer::start_with_payments().await;
    let browser = Browser::start().await;
    let mut lap = Instant::now();
    let mut step = |name: &str| {
        eprintln!("  {name}: {:.1} s", lap.elapsed().as_secs_f64());
        lap = Instant::now();
    };
    step("browser started");
    add_a_card(&browser, &server).await;
    step("add a card");
    buy_credits_with_the_card(&browser, &server).await;
    step("buy credits with the card");
    layout_and_keyboard(&browser).await;
    step("layout and keyboard");
    auto_recharge(&browser, &server).await;
    step("auto-recharge");
    failed_auto_recharge(&browser, &server).await;
    step("failed auto-recharge");
    buy_credits_without_a_card(&browser, &server).await;
    step("buy credits without a card");
    spend_and_save(&browser, &server).await;
    step("spend and save");
    transaction_pages(&browser, &server).await;
    step("transaction pages");
    contact_sales(&browser).await;
    step("contact sales");
    savings_across_cycles(&browser).await;
    step("savings across cycles");
    refused_links(&browser).await;
    step("refused links");
    invoice_billing(&browser).await;
    step("invoice billing");
    server.assert_ledger_clean().await;
    browser.close().await;
    eprintln!(
        "billing page flows took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        page_support::screenshot_dir().display()
    );
}
