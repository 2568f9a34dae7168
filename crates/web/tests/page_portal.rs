//! Portal links and sessions over plain HTTP (no browser): what `POST
//! /v1/portal_sessions` answers, that a link works once and for 5 minutes, what the
//! session cookie looks like, CSRF, and the page's headers and static files.

mod common;
mod page_support;

use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, SET_COOKIE};
use serde_json::json;

use common::{TestServer, assert_error};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// Follows a link; returns the `name=value` of the session cookie it set.
async fn redeem(link: &str) -> String {
    let response = client().get(link).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/billing");
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_portal_session_is_a_single_use_link_valid_five_minutes() {
    let server = TestServer::start().await;
    server.create_account("acme").await;
    let (status, body) = server
        .post(
            "/v1/portal_sessions",
            json!({"account_id": "acme", "return_url": "https://app.test/settings"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["object"], "portal_session");
    assert_eq!(body["account_id"], "acme");
    assert_eq!(body["return_url"], "https://app.test/settings");
    let url = body["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:8080/portal/tg_pl_"),
        "on the public URL: {url}"
    );
    let url = &server.url(&url["http://127.0.0.1:8080".len()..]);
    let expires_at = time::OffsetDateTime::parse(
        body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires_at - common::START, time::Duration::minutes(5));

    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/billing");
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("tollgate_portal="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=3600"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP must not mark the cookie Secure: {cookie}"
    );

    // Used once: never again, even by the browser it opened.
    let again = client().get(url).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    assert!(
        again.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        again
            .text()
            .await
            .unwrap()
            .contains("This billing link has expired")
    );

    // An unused link past its 5 minutes is refused too.
    let stale = page_support::portal_link(&server, "acme").await;
    server.clock.advance(time::Duration::seconds(5 * 60));
    let response = client().get(&stale).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // And so is a token that was never issued.
    let response = client()
        .get(server.url("/portal/tg_pl_notATokenAnyoneWasGiven000000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn portal_sessions_need_a_key_a_known_account_and_a_sane_return_url() {
    let server = TestServer::start().await;
    server.create_account("acme").await;
    let response = server
        .client
        .post(server.url("/v1/portal_sessions"))
        .json(&json!({"account_id": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    assert_error(
        &server
            .post("/v1/portal_sessions", json!({"account_id": "nobody"}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &server
            .post("/v1/portal_sessions", json!({"account_id": "no spaces"}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("account_id"),
    );
    for bad in ["javascript:alert(1)", "ftp://x.test", "https://x.test/\n"] {
        assert_error(
            &server
                .post(
                    "/v1/portal_sessions",
                    json!({"account_id": "acme", "return_url": bad}),
                )
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("return_url"),
        );
    }
    assert_error(
        &server.post("/v1/portal_sessions", json!({})).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("account_id"),
    );
}

#[tokio::test]
async fn the_page_needs_a_live_session_and_forms_need_its_csrf_token() {
    let server = TestServer::start_with_payments().await;
    server.funded_account("acme", "42.50").await;

    let response = client().get(server.url("/billing")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response.text().await.unwrap().contains("ask"),
        "expired page explains what to do"
    );
    let response = client()
        .get(server.url("/billing"))
        .header("cookie", "tollgate_portal=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let cookie = redeem(&page_support::portal_link(&server, "acme").await).await;
    let response = client()
        .get(server.url("/billing"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers[CACHE_CONTROL], "no-store");
    assert!(
        headers[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    let html = response.text().await.unwrap();
    assert!(html.contains("acme Inc."), "account name shown");
    assert!(html.contains("$42.50"), "balance shown as money");
    assert!(html.contains("No payment method"));
    assert!(html.contains("Auto-recharge off"));
    assert!(html.contains("Starter"));
    assert!(html.contains("target=\"_blank\" rel=\"noopener\""));
    assert!(html.contains("https://calendly.example/sales"));

    // Without the token (or with another session's), a form changes nothing.
    let other = redeem(&page_support::portal_link(&server, "acme").await).await;
    let other_html = client()
        .get(server.url("/billing"))
        .header("cookie", &other)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = other_html
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    for form in [
        vec![("amount", "25")],
        vec![("amount", "25"), ("csrf_token", token.as_str())],
    ] {
        let response = client()
            .post(server.url("/billing/topups"))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    // The right token passes: without a card, the browser is sent to the hosted page.
    let response = client()
        .post(server.url("/billing/topups"))
        .header("cookie", &other)
        .form(&[
            ("amount", "25"),
            ("csrf_token", token.as_str()),
            ("form_key", "k1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let location = response.headers()[LOCATION].to_str().unwrap();
    assert!(location.starts_with(&server.sandbox().base_url()), "{location}");
    // An amount the server refuses is explained, and nothing is recorded.
    let response = client()
        .post(server.url("/billing/topups"))
        .header("cookie", &other)
        .form(&[
            ("amount", "10.001"),
            ("csrf_token", token.as_str()),
            ("form_key", "k2"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.unwrap().contains("Use at most 2 decimals"));
    let (_, topups) = server.get("/v1/accounts/acme/topups").await;
    assert_eq!(topups["data"].as_array().unwrap().len(), 1, "{topups}");
}

#[tokio::test]
async fn static_files_are_hashed_and_cached_for_a_year() {
    let server = TestServer::start().await;
    server.create_account("acme").await;
    let cookie = redeem(&page_support::portal_link(&server, "acme").await).await;
    let html = client()
        .get(server.url("/billing"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let htmx = html
        .split("src=\"")
        .map(|rest| rest.split('"').next().unwrap())
        .find(|src| src.starts_with("/static/htmx-2.0."))
        .expect("htmx is linked")
        .to_owned();
    let response = client().get(server.url(&htmx)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert!(
        response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(response.text().await.unwrap().contains("htmx"));
    let response = client()
        .get(server.url("/static/htmx-2.0.11.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "only hashed names are served"
    );
}

#[tokio::test]
async fn racing_browsers_redeem_a_link_once() {
    let server = TestServer::start().await;
    server.create_account("acme").await;
    let link = page_support::portal_link(&server, "acme").await;
    let attempts = (0..8).map(|_| {
        let link = link.clone();
        tokio::spawn(async move { client().get(&link).send().await.unwrap().status() })
    });
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    let won = statuses
        .iter()
        .filter(|status| **status == StatusCode::SEE_OTHER)
        .count();
    let refused = statuses
        .iter()
        .filter(|status| **status == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!((won, refused), (1, 7), "{statuses:?}");
}

#[tokio::test]
async fn the_history_pages_through_every_line() {
    let server = TestServer::start().await;
    server.create_account("busy").await;
    for index in 0..55 {
        let (status, body) = server
            .send(
                server
                    .request(reqwest::Method::POST, "/v1/accounts/busy/grants")
                    .header("Idempotency-Key", format!("grant-{index}"))
                    .json(&json!({"amount": "1.00", "reason": format!("credit number {index}")})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let cookie = redeem(&page_support::portal_link(&server, "busy").await).await;
    let get = |path: String| {
        let cookie = cookie.clone();
        async move {
            client()
                .get(path)
                .header("cookie", cookie)
                .header("hx-request", "true")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let first = get(server.url("/billing")).await;
    assert!(first.contains("credit number 54") && !first.contains("credit number 4<"));
    assert!(
        !first.contains("transactions-newest"),
        "the first page has no way back"
    );
    let older = first
        .split("hx-get=\"/billing/transactions?starting_after=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a link to older lines")
        .to_owned();
    let second = get(server.url(&format!("/billing/transactions?starting_after={older}"))).await;
    assert!(
        second.starts_with("<section class=\"card wide\" id=\"transactions\""),
        "a fragment"
    );
    assert!(second.contains("credit number 4<") && second.contains("credit number 0<"));
    assert!(!second.contains("credit number 54"));
    assert!(second.contains("transactions-newest") && !second.contains("transactions-older"));
}

/// The session's CSRF token, as the page renders it into every form.
async fn csrf_token(server: &TestServer, cookie: &str) -> String {
    let html = client()
        .get(server.url("/billing"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    html.split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form with the CSRF token")
        .to_owned()
}

/// `form` with `token` as its `csrf_token`.
fn with_token<'a>(form: &[(&'a str, &'a str)], token: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut form = form.to_vec();
    form.push(("csrf_token", token));
    form
}

/// A form posted with `cookie`, as a browser would send it, or as htmx does when a
/// `header_token` is given.
async fn post_form(
    server: &TestServer,
    path: &str,
    cookie: &str,
    form: &[(&str, &str)],
    header_token: Option<&str>,
) -> reqwest::Response {
    let mut request = client()
        .post(server.url(path))
        .header("cookie", cookie)
        .form(form);
    if let Some(token) = header_token {
        // What htmx sends: the token in the header instead of the form.
        request = request.header("hx-request", "true").header("x-csrf-token", token);
    }
    request.send().await.unwrap()
}

/// The card form and the auto-recharge form refuse a post without this session's token
/// (none, another session's, a made-up one in the htmx header) and change nothing; the
/// same post with the token goes through, so the token is what was refused.
#[tokio::test]
async fn the_card_and_auto_recharge_forms_need_the_csrf_token() {
    let server = TestServer::start_with_payments().await;
    server.funded_account("acme", "42.50").await;
    let cookie = redeem(&page_support::portal_link(&server, "acme").await).await;
    let token = csrf_token(&server, &cookie).await;
    let other = redeem(&page_support::portal_link(&server, "acme").await).await;
    let other_token = csrf_token(&server, &other).await;
    assert_ne!(token, other_token, "each session has its own token");
    let checkout_sessions = || {
        server.sandbox().state()["checkout_sessions"]
            .as_array()
            .map_or(0, Vec::len)
    };

    // The card form: a refused post opens no hosted page and saves nothing.
    for (form, header) in [
        (vec![], None),
        (with_token(&[], &other_token), None),
        (vec![], Some("not-the-token")),
    ] {
        let response = post_form(&server, "/billing/payment_method", &cookie, &form, header).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{form:?} {header:?}");
        assert!(response.headers().get(LOCATION).is_none());
        assert!(response.headers().get("hx-redirect").is_none());
        assert!(response.text().await.unwrap().contains("This form has expired"));
    }
    assert_eq!(checkout_sessions(), 0, "no hosted page was opened");
    assert!(server.account("acme").await["payment_method"].is_null());
    let response = post_form(
        &server,
        "/billing/payment_method",
        &cookie,
        &[("csrf_token", token.as_str())],
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let location = response.headers()[LOCATION].to_str().unwrap();
    assert!(location.starts_with(&server.sandbox().base_url()), "{location}");
    assert_eq!(checkout_sessions(), 1);

    // The auto-recharge form needs a card to act on (and $42.50 stays above the $20.00
    // threshold, so no recharge runs meanwhile).
    server.add_card("acme", common::payments::CARD_OK).await;
    let rule = || async { server.account("acme").await["auto_recharge"].clone() };
    let before = rule().await;
    assert_eq!(before["status"], "off", "{before}");
    let enable = [("enabled", "true"), ("threshold", "20"), ("target", "80")];
    for (form, header) in [
        (enable.to_vec(), None),
        (with_token(&enable, &other_token), None),
        (enable.to_vec(), Some("not-the-token")),
    ] {
        let response = post_form(&server, "/billing/auto_recharge", &cookie, &form, header).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{form:?} {header:?}");
    }
    assert_eq!(rule().await, before, "a refused form changes nothing");
    let response = post_form(
        &server,
        "/billing/auto_recharge",
        &cookie,
        &with_token(&enable, &token),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let on = rule().await;
    assert_eq!(
        (&on["enabled"], &on["threshold"], &on["target"]),
        (&json!(true), &json!("20.00"), &json!("80.00")),
        "{on}"
    );
    // Nor can a forged post switch it off (a form without `enabled` is "off").
    for (form, header) in [
        (vec![], None),
        (with_token(&[], &other_token), None),
        (vec![], Some("not-the-token")),
    ] {
        let response = post_form(&server, "/billing/auto_recharge", &cookie, &form, header).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{form:?} {header:?}");
    }
    assert_eq!(rule().await, on, "still on, as saved");
    server.assert_ledger_clean().await;
}
