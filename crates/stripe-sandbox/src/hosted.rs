//! The hosted pages: Checkout's card form and the 3-D Secure challenge.
//!
//! Plain server-rendered HTML forms with stable ids (`#cardNumber`, `#cardExpiry`, `#cardCvc`,
//! `#billingName`, `#submit`, `#cancel`, `#error`, `#complete-auth`, `#fail-auth`) so both a
//! browser test and a plain HTTP client can drive them.

use std::sync::Arc;

use axum::Form;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::App;
use crate::cards::{digits, luhn_valid};
use crate::objects::{CheckoutSession, Mode, SessionStatus};
use crate::state::{CardInput, PageOutcome};
use crate::wire::format_amount;

/// Routes of the hosted pages.
pub(crate) fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/checkout/{id}", get(show_checkout).post(submit_checkout))
        .route(
            "/checkout/{id}/authenticate",
            get(show_session_challenge).post(answer_session_challenge),
        )
        .route(
            "/authenticate/{id}",
            get(show_payment_challenge).post(answer_payment_challenge),
        )
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
*{box-sizing:border-box}body{margin:0;font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;background:#f6f9fc;color:#1a1f36}
main{max-width:440px;margin:48px auto;padding:32px;background:#fff;border-radius:8px;box-shadow:0 2px 12px rgba(50,50,93,.12)}
.badge{display:inline-block;font-size:12px;font-weight:600;color:#a4552a;background:#fcedb9;border-radius:4px;padding:2px 6px;margin-bottom:12px}
h1{font-size:20px;margin:0 0 4px}.amount{font-size:32px;font-weight:600;margin:4px 0 16px}.muted{color:#697386;font-size:14px}
ul.items{list-style:none;padding:0;margin:0 0 20px}ul.items li{display:flex;justify-content:space-between;font-size:14px;padding:4px 0}
label{display:block;font-size:14px;font-weight:500;margin:14px 0 6px}
input{width:100%;font-size:16px;padding:10px 12px;border:1px solid #cfd7df;border-radius:6px}
input:focus{outline:2px solid #635bff;outline-offset:0;border-color:#635bff}
.row{display:flex;gap:12px}.row>div{flex:1}
button{width:100%;margin-top:22px;padding:12px;font-size:16px;font-weight:600;color:#fff;background:#635bff;border:0;border-radius:6px;cursor:pointer}
button.secondary{background:#fff;color:#df1b41;border:1px solid #df1b41}
#error{margin-top:16px;padding:10px 12px;color:#df1b41;background:#fff1f3;border-radius:6px;font-size:14px}
a{color:#635bff}.back{display:inline-block;margin-bottom:16px;font-size:14px;text-decoration:none}
"#;

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        esc(title)
    )
}

fn message_page(status: StatusCode, title: &str, message: &str, link: Option<(&str, &str)>) -> Response {
    let link = link
        .map(|(href, text)| {
            format!(
                "<p><a id=\"continue\" href=\"{}\">{}</a></p>",
                esc(href),
                esc(text)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<span class=\"badge\">Test mode</span><h1>{}</h1><p id=\"message\" class=\"muted\">{}</p>{link}",
        esc(title),
        esc(message)
    );
    (status, Html(page(title, &body))).into_response()
}

fn not_found() -> Response {
    message_page(
        StatusCode::NOT_FOUND,
        "Page not found",
        "This checkout page does not exist.",
        None,
    )
}

/// How a brand is written for people.
fn brand_name(brand: &str) -> &str {
    match brand {
        "visa" => "Visa",
        "mastercard" => "Mastercard",
        "amex" => "American Express",
        "discover" => "Discover",
        "jcb" => "JCB",
        "diners" => "Diners Club",
        "unionpay" => "UnionPay",
        other => other,
    }
}

/// What the person typed, echoed back after an error.
#[derive(Debug, Default, Deserialize)]
struct CardForm {
    #[serde(default, rename = "cardNumber")]
    card_number: String,
    #[serde(default, rename = "cardExpiry")]
    card_expiry: String,
    #[serde(default, rename = "cardCvc")]
    card_cvc: String,
    #[serde(default, rename = "billingName")]
    billing_name: String,
}

fn error_block(error: Option<&str>) -> String {
    match error {
        Some(e) => format!("<div id=\"error\" role=\"alert\">{}</div>", esc(e)),
        None => "<div id=\"error\" role=\"alert\" hidden></div>".to_string(),
    }
}

fn summary(s: &CheckoutSession) -> String {
    match s.mode {
        Mode::Setup => {
            "<h1>Save a card</h1><p class=\"muted\">Your card will be saved for future payments.</p>"
                .to_string()
        }
        Mode::Payment => {
            let currency = s.currency.as_deref().unwrap_or("usd");
            let items: String = s
                .line_items
                .iter()
                .map(|l| {
                    let qty = if l.quantity > 1 {
                        format!(" × {}", l.quantity)
                    } else {
                        String::new()
                    };
                    format!(
                        "<li><span>{}{qty}</span><span>{}</span></li>",
                        esc(&l.name),
                        esc(&format_amount(l.unit_amount.saturating_mul(l.quantity), currency))
                    )
                })
                .collect();
            let save = if s.pi_setup_future_usage.is_some() {
                "<p class=\"muted\">Your card will be saved for future payments.</p>"
            } else {
                ""
            };
            format!(
                "<h1>Pay</h1><div class=\"amount\" id=\"amount\">{}</div><ul class=\"items\">{items}</ul>{save}",
                esc(&format_amount(s.amount_total().unwrap_or(0), currency))
            )
        }
    }
}

fn card_page(base: &str, s: &CheckoutSession, error: Option<&str>, form: &CardForm) -> Response {
    let cancel = s
        .cancel_url
        .as_deref()
        .map(|u| {
            format!(
                "<a id=\"cancel\" class=\"back\" href=\"{}\">&larr; Cancel and go back</a>",
                esc(u)
            )
        })
        .unwrap_or_default();
    let button = match s.mode {
        Mode::Setup => "Save card".to_string(),
        Mode::Payment => format!(
            "Pay {}",
            format_amount(
                s.amount_total().unwrap_or(0),
                s.currency.as_deref().unwrap_or("usd")
            )
        ),
    };
    let body = format!(
        r#"{cancel}<div><span class="badge">Test mode</span></div>{summary}
<form id="payment-form" method="post" action="{base}/checkout/{id}" novalidate>
<label for="cardNumber">Card number</label>
<input id="cardNumber" name="cardNumber" inputmode="numeric" autocomplete="cc-number" aria-describedby="error" placeholder="1234 1234 1234 1234" value="{number}" required>
<div class="row"><div>
<label for="cardExpiry">Expiration (MM / YY)</label>
<input id="cardExpiry" name="cardExpiry" inputmode="numeric" autocomplete="cc-exp" aria-describedby="error" placeholder="MM / YY" value="{expiry}" required>
</div><div>
<label for="cardCvc">CVC</label>
<input id="cardCvc" name="cardCvc" inputmode="numeric" autocomplete="cc-csc" aria-describedby="error" placeholder="CVC" required>
</div></div>
<label for="billingName">Name on card</label>
<input id="billingName" name="billingName" autocomplete="cc-name" value="{name}">
{error}
<button id="submit" type="submit">{button}</button>
</form>"#,
        summary = summary(s),
        base = esc(base),
        id = esc(&s.id),
        number = esc(&form.card_number),
        expiry = esc(&form.card_expiry),
        name = esc(&form.billing_name),
        error = error_block(error),
        button = esc(&button),
    );
    Html(page("Checkout (Stripe sandbox)", &body)).into_response()
}

fn closed_page(s: &CheckoutSession) -> Response {
    match s.status {
        SessionStatus::Complete => {
            let link = s
                .success_url
                .as_deref()
                .map(|u| u.replace("{CHECKOUT_SESSION_ID}", &s.id));
            message_page(
                StatusCode::OK,
                "Thanks!",
                "This checkout session is complete.",
                link.as_deref().map(|u| (u, "Continue")),
            )
        }
        _ => message_page(
            StatusCode::GONE,
            "Session expired",
            "This checkout session has expired.",
            s.cancel_url.as_deref().map(|u| (u, "Go back")),
        ),
    }
}

async fn show_checkout(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let Some(s) = app.with(|state| state.session(&id)) else {
        return not_found();
    };
    if s.status != SessionStatus::Open {
        return closed_page(&s);
    }
    card_page(&app.public_base, &s, None, &CardForm::default())
}

/// Current (year, month) in UTC from the system clock.
pub(crate) fn current_year_month() -> (u32, u32) {
    // Civil-from-days (Howard Hinnant's algorithm) to avoid a date library for one comparison.
    let days = crate::wire::now().div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        u32::try_from(year).unwrap_or(0),
        u32::try_from(month).unwrap_or(1),
    )
}

/// Validates the form like Stripe's card element, returning its exact messages.
fn validate(form: &CardForm) -> Result<CardInput, &'static str> {
    let number = digits(&form.card_number);
    if number.len() < 12 {
        return Err("Your card number is incomplete.");
    }
    if !luhn_valid(&number) {
        return Err("Your card number is incorrect.");
    }
    let exp = digits(&form.card_expiry);
    let (month, year) = match exp.len() {
        4 => (
            exp[..2].parse::<u32>().ok(),
            exp[2..].parse::<u32>().ok().map(|y| 2000 + y),
        ),
        6 => (exp[..2].parse::<u32>().ok(), exp[2..].parse::<u32>().ok()),
        _ => return Err("Your card's expiration date is incomplete."),
    };
    let (Some(month), Some(year)) = (month, year) else {
        return Err("Your card's expiration date is incomplete.");
    };
    if !(1..=12).contains(&month) {
        return Err("Your card's expiration date is invalid.");
    }
    let (cy, cm) = current_year_month();
    if year < cy || (year == cy && month < cm) {
        return Err("Your card's expiration date is in the past.");
    }
    if year > cy + 50 {
        return Err("Your card's expiration year is invalid.");
    }
    let cvc = form.card_cvc.trim();
    if cvc.len() < 3 || !cvc.bytes().all(|b| b.is_ascii_digit()) {
        return Err("Your card's security code is incomplete.");
    }
    if cvc.len() > 4 {
        return Err("Your card's security code is invalid.");
    }
    let name = form.billing_name.trim();
    Ok(CardInput {
        number,
        exp_month: month,
        exp_year: year,
        billing_name: if name.is_empty() {
            None
        } else {
            Some(name.chars().take(200).collect())
        },
    })
}

fn challenge_page(action: &str, title: &str, detail: &str, cancel: Option<&str>) -> Response {
    let cancel = cancel
        .map(|u| {
            format!(
                "<a id=\"cancel\" class=\"back\" href=\"{}\">&larr; Cancel and go back</a>",
                esc(u)
            )
        })
        .unwrap_or_default();
    let body = format!(
        r#"{cancel}<div><span class="badge">Test mode</span></div>
<h1>{title}</h1>
<p class="muted" id="challenge-detail">{detail}</p>
<p class="muted">This is a 3-D Secure test page. Complete or fail the authentication to see how your integration handles it.</p>
<form method="post" action="{action}">
<button id="complete-auth" name="action" value="complete" type="submit">Complete authentication</button>
<button id="fail-auth" class="secondary" name="action" value="fail" type="submit">Fail authentication</button>
</form>"#,
        title = esc(title),
        detail = esc(detail),
        action = esc(action),
    );
    Html(page(title, &body)).into_response()
}

async fn submit_checkout(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Form(form): Form<CardForm>,
) -> Response {
    let Some(s) = app.with(|state| state.session(&id)) else {
        return not_found();
    };
    if s.status != SessionStatus::Open {
        return closed_page(&s);
    }
    let input = match validate(&form) {
        Ok(i) => i,
        Err(msg) => return card_page(&app.public_base, &s, Some(msg), &form),
    };
    match app.with(|state| state.submit_card(&id, input)) {
        Ok(outcome) => outcome_response(&app, &id, outcome, &form),
        Err(_) => not_found(),
    }
}

fn outcome_response(app: &App, id: &str, outcome: PageOutcome, form: &CardForm) -> Response {
    match outcome {
        PageOutcome::Redirect(url) => Redirect::to(&url).into_response(),
        PageOutcome::Challenge => {
            Redirect::to(&format!("{}/checkout/{id}/authenticate", app.public_base)).into_response()
        }
        PageOutcome::Error(msg) => match app.with(|state| state.session(id)) {
            Some(s) if s.status == SessionStatus::Open => card_page(&app.public_base, &s, Some(&msg), form),
            Some(s) => closed_page(&s),
            None => not_found(),
        },
    }
}

async fn show_session_challenge(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let Some(s) = app.with(|state| state.session(&id)) else {
        return not_found();
    };
    let Some(pending) = s.pending.as_ref().filter(|_| s.status == SessionStatus::Open) else {
        return Redirect::to(&format!("{}/checkout/{id}", app.public_base)).into_response();
    };
    let what = match s.mode {
        Mode::Setup => "saving".to_string(),
        Mode::Payment => format!(
            "a payment of {}",
            format_amount(
                s.amount_total().unwrap_or(0),
                s.currency.as_deref().unwrap_or("usd")
            )
        ),
    };
    let detail = format!(
        "Your bank asks you to confirm {what} with your {} card ending in {}.",
        brand_name(pending.card.brand),
        pending.card.last4
    );
    challenge_page(
        &format!("{}/checkout/{id}/authenticate", app.public_base),
        "Complete authentication",
        &detail,
        s.cancel_url.as_deref(),
    )
}

/// The buttons of the challenge page.
#[derive(Debug, Deserialize)]
struct ChallengeForm {
    #[serde(default)]
    action: String,
}

async fn answer_session_challenge(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Form(form): Form<ChallengeForm>,
) -> Response {
    let success = match form.action.as_str() {
        "complete" => true,
        "fail" => false,
        _ => return (StatusCode::BAD_REQUEST, "action must be complete or fail").into_response(),
    };
    match app.with(|state| state.answer_session_challenge(&id, success)) {
        Ok(outcome) => outcome_response(&app, &id, outcome, &CardForm::default()),
        Err(_) => not_found(),
    }
}

async fn show_payment_challenge(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let Some(payment_intent) = app.with(|state| state.payment_intent(&id)) else {
        return not_found();
    };
    if payment_intent.status.as_str() != "requires_action" {
        return message_page(
            StatusCode::OK,
            "Nothing to authenticate",
            "This payment does not need authentication.",
            None,
        );
    }
    let detail = format!(
        "Your bank asks you to confirm a payment of {}.",
        format_amount(payment_intent.amount, &payment_intent.currency)
    );
    challenge_page(
        &format!("{}/authenticate/{id}", app.public_base),
        "Complete authentication",
        &detail,
        None,
    )
}

async fn answer_payment_challenge(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Form(form): Form<ChallengeForm>,
) -> Response {
    let success = match form.action.as_str() {
        "complete" => true,
        "fail" => false,
        _ => return (StatusCode::BAD_REQUEST, "action must be complete or fail").into_response(),
    };
    let return_url = app
        .with(|state| state.payment_intent(&id))
        .and_then(|payment_intent| payment_intent.return_url);
    match app.with(|state| state.answer_payment_challenge(&id, success)) {
        Ok(status) => match return_url {
            Some(url) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                Redirect::to(&format!("{url}{sep}payment_intent={id}&redirect_status={status}"))
                    .into_response()
            }
            None => message_page(
                StatusCode::OK,
                "Authentication finished",
                &format!("The payment {status}."),
                None,
            ),
        },
        Err(e) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            e.body
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("error")
                .to_string(),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_messages() {
        let f = |n: &str, e: &str, c: &str| CardForm {
            card_number: n.into(),
            card_expiry: e.into(),
            card_cvc: c.into(),
            billing_name: String::new(),
        };
        assert!(validate(&f("4242 4242 4242 4242", "12 / 40", "123")).is_ok());
        assert_eq!(
            validate(&f("4242 4242 4242 4241", "12/40", "123")).unwrap_err(),
            "Your card number is incorrect."
        );
        assert_eq!(
            validate(&f("4242", "12/40", "123")).unwrap_err(),
            "Your card number is incomplete."
        );
        assert_eq!(
            validate(&f("4242424242424242", "01/20", "123")).unwrap_err(),
            "Your card's expiration date is in the past."
        );
        assert_eq!(
            validate(&f("4242424242424242", "13/40", "123")).unwrap_err(),
            "Your card's expiration date is invalid."
        );
        assert_eq!(
            validate(&f("4242424242424242", "12/40", "12")).unwrap_err(),
            "Your card's security code is incomplete."
        );
        let (y, m) = current_year_month();
        assert!(y >= 2024 && (1..=12).contains(&m));
    }

    #[test]
    fn escapes_html() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
