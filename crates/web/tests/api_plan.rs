//! Plans over HTTP: what Sales sets (invoice billing with a credit limit, a personal
//! discount, custom prices, net terms) prices the next charge, lets an invoice account
//! go down to its limit and no further, is refused when it would not cover a debt, and
//! is in the audit log with who set it.

mod common;

use common::{TestServer, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn put_plan(server: &TestServer, account: &str, body: Value) -> (StatusCode, Value) {
    server
        .send(
            server
                .request(Method::PUT, &format!("/v1/accounts/{account}/plan"))
                .json(&body),
        )
        .await
}

async fn prices(server: &TestServer, account: &str) -> Vec<(String, String, String)> {
    let (status, summary) = server.get(&format!("/v1/accounts/{account}/billing")).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    summary["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| {
            (
                line["action"].as_str().unwrap().to_owned(),
                line["price"].as_str().unwrap().to_owned(),
                line["price_source"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn price_of<'a>(prices: &'a [(String, String, String)], action: &str) -> (&'a str, &'a str) {
    let line = prices.iter().find(|line| line.0 == action).unwrap();
    (line.1.as_str(), line.2.as_str())
}

#[tokio::test]
async fn a_sales_plan_prices_charges_and_lets_an_invoice_account_use_its_credit() {
    let server = TestServer::start().await;
    server.create_account("bigco").await;
    let (status, plan) = server.get("/v1/accounts/bigco/plan").await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        plan,
        json!({"object": "plan", "account_id": "bigco", "billing_mode": "prepaid", "credit_limit": null,
               "discount_percent": null, "prices": {}, "net_terms_days": null})
    );
    // Prepaid with nothing: no action.
    assert_error(
        &server.usage("bigco", "api", 1, "p0").await,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_balance",
        None,
    );

    let (status, plan) = put_plan(
        &server,
        "bigco",
        json!({"billing_mode": "invoice", "credit_limit": "100.00", "discount_percent": 30,
               "prices": {"email_finder": "0.010"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["billing_mode"], "invoice");
    assert_eq!(plan["credit_limit"], "100.00");
    assert_eq!(plan["discount_percent"], 30);
    assert_eq!(plan["prices"], json!({"email_finder": "0.01"}));
    assert_eq!(plan["net_terms_days"], 30, "the default terms");
    let (_, fetched) = server.get("/v1/accounts/bigco/plan").await;
    assert_eq!(fetched, plan);

    // The summary shows where each price comes from: custom wins, else 30% off beats Starter.
    let lines = prices(&server, "bigco").await;
    assert_eq!(price_of(&lines, "email_finder"), ("0.01", "custom"));
    assert_eq!(price_of(&lines, "api"), ("0.014", "personal_discount"));
    assert_eq!(price_of(&lines, "export"), ("0.014", "personal_discount"));

    // The charge uses them, and an invoice account goes below zero down to its limit.
    let (status, charge) = server.usage("bigco", "api", 5_000, "p1").await;
    assert_eq!(status, StatusCode::OK, "{charge}");
    assert_eq!(charge["amount"], "70.00");
    assert_eq!(charge["price_source"], "personal_discount");
    assert_eq!(server.account("bigco").await["available_balance"], "-70.00");
    let (status, charge) = server.usage("bigco", "email_finder", 3_000, "p2").await;
    assert_eq!(status, StatusCode::OK, "{charge}");
    assert_eq!(charge["amount"], "30.00");
    assert_eq!(charge["price_source"], "custom");
    // −100.00: the limit. One more cent of usage is refused.
    assert_error(
        &server.usage("bigco", "email_finder", 1, "p3").await,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_balance",
        None,
    );

    // A plan that does not cover the debt is refused and changes nothing.
    for body in [
        json!({"billing_mode": "prepaid"}),
        json!({"billing_mode": "invoice", "credit_limit": "50.00"}),
    ] {
        assert_error(
            &put_plan(&server, "bigco", body).await,
            StatusCode::CONFLICT,
            "conflict",
            None,
        );
    }
    assert_eq!(server.get("/v1/accounts/bigco/plan").await.1, plan);

    // A larger limit is fine, and the change is audited with who made it, before and after.
    let (status, raised) = put_plan(
        &server,
        "bigco",
        json!({"billing_mode": "invoice", "credit_limit": "500.00", "net_terms_days": 45}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{raised}");
    assert_eq!(
        raised["discount_percent"],
        Value::Null,
        "a PUT replaces the whole plan"
    );
    assert_eq!(raised["prices"], json!({}));
    // $100 spent this cycle: Growth, 10% off list.
    assert_eq!(
        price_of(&prices(&server, "bigco").await, "email_finder"),
        ("0.027", "tier")
    );
    let (_, audit) = server.get("/v1/audit").await;
    let entry = &audit["data"][0];
    assert_eq!(entry["action"], "plan.updated");
    assert_eq!(entry["actor"], "api_key:operator");
    assert_eq!(entry["account_id"], "bigco");
    assert_eq!(
        entry["before"],
        "billing_mode=invoice credit_limit=100.00 net_terms_days=30 discount_percent=30 price.email_finder=0.01"
    );
    assert_eq!(
        entry["after"],
        "billing_mode=invoice credit_limit=500.00 net_terms_days=45"
    );
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn bad_plans_name_the_field_and_change_nothing() {
    let server = TestServer::start().await;
    server.create_account("acme").await;
    let before = server.get("/v1/accounts/acme/plan").await.1;
    let cases = [
        (
            json!({"billing_mode": "barter"}),
            "invalid_request",
            "billing_mode",
        ),
        (
            json!({"billing_mode": "prepaid", "credit_limit": "10.00"}),
            "invalid_amount",
            "credit_limit",
        ),
        (
            json!({"billing_mode": "invoice", "credit_limit": "-1.00"}),
            "invalid_amount",
            "credit_limit",
        ),
        (
            json!({"billing_mode": "invoice", "credit_limit": 100}),
            "invalid_amount",
            "credit_limit",
        ),
        (
            json!({"billing_mode": "invoice", "credit_limit": "0.001"}),
            "invalid_amount",
            "credit_limit",
        ),
        (
            json!({"billing_mode": "invoice", "net_terms_days": 0}),
            "invalid_request",
            "net_terms_days",
        ),
        (
            json!({"billing_mode": "prepaid", "net_terms_days": 30}),
            "invalid_request",
            "net_terms_days",
        ),
        (
            json!({"billing_mode": "prepaid", "discount_percent": 101}),
            "invalid_request",
            "discount_percent",
        ),
        (
            json!({"billing_mode": "prepaid", "prices": {"teleport": "0.01"}}),
            "invalid_amount",
            "prices.teleport",
        ),
        (
            json!({"billing_mode": "prepaid", "prices": {"api": "-0.01"}}),
            "invalid_amount",
            "prices.api",
        ),
        (
            json!({"billing_mode": "prepaid", "prices": {"api": "cheap"}}),
            "invalid_amount",
            "prices.api",
        ),
    ];
    for (body, code, param) in cases {
        assert_error(
            &put_plan(&server, "acme", body).await,
            StatusCode::BAD_REQUEST,
            code,
            Some(param),
        );
    }
    let unknown = put_plan(&server, "acme", json!({"billing_mode": "prepaid", "discount": 5})).await;
    assert_eq!(unknown.0, StatusCode::BAD_REQUEST, "{}", unknown.1);
    assert_error(
        &put_plan(&server, "nobody", json!({"billing_mode": "prepaid"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_eq!(server.get("/v1/accounts/acme/plan").await.1, before);
    let (_, audit) = server.get("/v1/audit").await;
    assert!(
        audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|entry| entry["action"] != "plan.updated"),
        "{audit}"
    );
}
