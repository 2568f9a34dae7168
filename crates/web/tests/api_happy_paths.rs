//! Every endpoint's happy path, with exact JSON fields and money strings.

mod common;

use common::{START, TestServer, keys, sorted};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tollgate_store::ApiKeyRecord;

#[tokio::test]
async fn accounts_are_created_read_and_listed() {
    let server = TestServer::start().await;
    let (status, acme) = server
        .post(
            "/v1/accounts",
            json!({"id": "acme", "name": "Acme", "email": "billing@acme.test"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        acme,
        json!({
            "id": "acme",
            "object": "account",
            "name": "Acme",
            "email": "billing@acme.test",
            "balance": "0.00",
            "available_balance": "0.00",
            "held_balance": "0.00",
            "billing_mode": "prepaid",
            "credit_limit": null,
            "tier": {"id": "starter", "name": "Starter", "discount_percent": 0},
            "payment_method": null,
            "auto_recharge": {
                "enabled": false, "threshold": null, "target": null, "status": "off",
                "monthly_cap": "5000.00", "recharged_this_cycle": "0.00",
                "failure_code": null, "failed_at": null, "retry_at": null
            },
            "created_at": "2026-11-10T10:00:00Z",
        })
    );
    assert_eq!(server.account("acme").await, acme);

    let (status, generated) = server
        .post("/v1/accounts", json!({"name": "No Id", "email": "x@y.test"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let generated_id = generated["id"].as_str().unwrap().to_owned();
    assert!(
        generated_id.starts_with("acct_") && generated_id.len() <= 64,
        "{generated_id}"
    );
    assert_eq!(server.account(&generated_id).await["name"], "No Id");

    server.create_account("beta").await;
    server.create_account("gamma").await;
    let (status, first) = server.get("/v1/accounts?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [generated_id.as_str(), "acme"]);
    assert_eq!(first["has_more"], true);
    let (_, second) = server.get("/v1/accounts?limit=2&starting_after=acme").await;
    let ids: Vec<&str> = second["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["beta", "gamma"]);
    assert_eq!(second["has_more"], false);
    let (_, default_page) = server.get("/v1/accounts").await;
    assert_eq!(default_page["data"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn usage_is_priced_at_the_tier_before_the_crossing_charge() {
    let server = TestServer::start().await;
    server.funded_account("acme", "200.00").await;

    let (status, first) = server.usage("acme", "email_finder", 3333, "e1").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        keys(&first),
        sorted(&[
            "id",
            "object",
            "account_id",
            "action",
            "quantity",
            "unit_price",
            "unit_list_price",
            "amount",
            "list_amount",
            "savings",
            "tier",
            "price_source",
            "price_book_version",
            "balance",
            "available_balance",
            "replayed",
            "created_at",
        ])
    );
    assert_eq!(first["object"], "usage");
    assert_eq!(first["account_id"], "acme");
    assert_eq!(first["action"], "email_finder");
    assert_eq!(first["quantity"], 3333);
    assert_eq!(first["unit_price"], "0.03");
    assert_eq!(first["amount"], "99.99");
    assert_eq!(first["list_amount"], "99.99");
    assert_eq!(first["savings"], "0.00");
    assert_eq!(first["tier"], "starter");
    assert_eq!(first["price_source"], "tier");
    assert_eq!(first["balance"], "100.01");
    assert_eq!(first["available_balance"], "100.01");
    assert_eq!(first["replayed"], false);
    assert_eq!(first["created_at"], "2026-11-10T10:00:00Z");
    assert!(first["price_book_version"].as_str().unwrap().starts_with("pb_"));

    // This charge crosses $100 of spend: still priced at Starter.
    let (_, crossing) = server.usage("acme", "email_finder", 1, "e2").await;
    assert_eq!(
        (crossing["unit_price"].as_str(), crossing["tier"].as_str()),
        (Some("0.03"), Some("starter"))
    );
    assert_eq!(crossing["balance"], "99.98");

    let (_, growth) = server.usage("acme", "email_finder", 1, "e3").await;
    assert_eq!(growth["unit_price"], "0.027");
    assert_eq!(growth["unit_list_price"], "0.03");
    assert_eq!(growth["tier"], "growth");
    assert_eq!(growth["list_amount"], "0.03");
    assert_eq!(growth["savings"], "0.003");
    assert_eq!(growth["balance"], "99.953");

    let (_, export) = server.usage("acme", "export", 1, "e4").await;
    assert_eq!(export["unit_price"], "0.0196");
    assert_eq!(export["savings"], "0.0004");
    assert_eq!(export["balance"], "99.9334");

    let (status, billing) = server.get("/v1/accounts/acme/billing").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        billing,
        json!({
            "object": "billing_summary",
            "account_id": "acme",
            "balance": "99.9334",
            "available_balance": "99.9334",
            "held_balance": "0.00",
            "tier": {"id": "growth", "name": "Growth", "discount_percent": 10},
            "cycle": {"start": "2026-11-10T00:00:00Z", "end": "2026-12-10T00:00:00Z", "spent": "100.0666"},
            "savings": {"cycle": "0.0034", "lifetime": "0.0034"},
            "next_tier": {
                "id": "pro",
                "name": "Pro",
                "discount_percent": 20,
                "spend_needed": "399.9334",
                // $100.0666 in the 10 h since the cycle began: $399.9334 more takes ~40 h.
                "projected_at": "2026-11-12T01:58:00Z",
            },
            "prices": [
                {"action": "email_finder", "name": "Email Finder", "unit": "valid email found", "list_price": "0.03", "price": "0.027", "price_source": "tier"},
                {"action": "email_validation", "name": "Email Validation", "unit": "email checked", "list_price": "0.005", "price": "0.0045", "price_source": "tier"},
                {"action": "export", "name": "Export", "unit": "row exported", "list_price": "0.02", "price": "0.0196", "price_source": "tier"},
                {"action": "ui_search", "name": "UI Search", "unit": "search", "list_price": "0.00", "price": "0.00", "price_source": "tier"},
                {"action": "api", "name": "API", "unit": "request", "list_price": "0.02", "price": "0.018", "price_source": "tier"},
            ],
            "payment_method": null,
            "auto_recharge": {
                "enabled": false, "threshold": null, "target": null, "status": "off",
                "monthly_cap": "5000.00", "recharged_this_cycle": "0.00",
                "failure_code": null, "failed_at": null, "retry_at": null
            },
            "billing_mode": "prepaid",
            "credit_limit": null,
            "tier_basis": "cycle",
            "contact_sales_url": "https://calendly.example/sales",
        })
    );
    let account = server.account("acme").await;
    assert_eq!(
        account["tier"],
        json!({"id": "growth", "name": "Growth", "discount_percent": 10})
    );
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn a_fresh_account_has_no_projection() {
    let server = TestServer::start().await;
    server.create_account("fresh").await;
    let (_, billing) = server.get("/v1/accounts/fresh/billing").await;
    assert_eq!(
        billing["next_tier"],
        json!({"id": "growth", "name": "Growth", "discount_percent": 10, "spend_needed": "100.00", "projected_at": null})
    );
    assert_eq!(billing["cycle"]["spent"], "0.00");
    assert_eq!(billing["savings"], json!({"cycle": "0.00", "lifetime": "0.00"}));
}

#[tokio::test]
async fn tiers_are_listed_ascending_with_their_prices() {
    let server = TestServer::start().await;
    let (status, tiers) = server.get("/v1/tiers").await;
    assert_eq!(status, StatusCode::OK);
    let data = tiers["data"].as_array().unwrap();
    let summary: Vec<(&str, &str, u64)> = data
        .iter()
        .map(|tier| {
            (
                tier["id"].as_str().unwrap(),
                tier["min_spend"].as_str().unwrap(),
                tier["discount_percent"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("starter", "0.00", 0),
            ("growth", "100.00", 10),
            ("pro", "500.00", 20),
            ("scale", "2000.00", 35),
            ("business", "10000.00", 50),
            ("enterprise", "50000.00", 60),
        ]
    );
    assert_eq!(data[1]["name"], "Growth");
    assert_eq!(data[1]["object"], "tier");
    let growth_prices = &data[1]["prices"];
    assert_eq!(
        growth_prices[0],
        json!({"action": "email_finder", "list_price": "0.03", "price": "0.027"})
    );
    assert_eq!(
        growth_prices[2],
        json!({"action": "export", "list_price": "0.02", "price": "0.0196"})
    );
    assert_eq!(data[3]["prices"][1]["price"], "0.00325");
    assert_eq!(data[5]["prices"][2]["price"], "0.018");
    assert_eq!(tiers["has_more"], false);
}

#[tokio::test]
async fn batches_charge_in_order_and_refuse_events_on_their_own() {
    let server = TestServer::start().await;
    server.funded_account("batchco", "1.00").await;
    server.create_account("poor").await;
    let event = |account: &str, action: &str, quantity: serde_json::Value, key: &str| json!({"account_id": account, "action": action, "quantity": quantity, "idempotency_key": key});
    let (status, body) = server
        .post(
            "/v1/usage/batch",
            json!({"events": [
                event("batchco", "email_finder", json!(2), "b1"),
                event("batchco", "email_finder", json!("1"), "b2"),
                event("batchco", "teleport", json!(1), "b3"),
                event("nobody", "email_finder", json!(1), "b4"),
                event("poor", "email_finder", json!(1), "b5"),
                event("batchco", "email_finder", json!(2), "b1"),
                {"account_id": "batchco", "action": "export", "quantity": 1},
                "not an event",
                event("batchco", "export", json!(1), "b6"),
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 9);
    assert_eq!(results[0]["amount"], "0.06");
    assert_eq!(results[0]["replayed"], false);
    assert_eq!(results[1]["error"]["code"], "invalid_request");
    assert_eq!(results[1]["error"]["param"], "quantity");
    assert_eq!(results[2]["error"]["code"], "invalid_request");
    assert_eq!(results[2]["error"]["param"], "action");
    assert_eq!(results[3]["error"]["code"], "not_found");
    assert_eq!(results[4]["error"]["code"], "insufficient_balance");
    assert_eq!(results[5]["replayed"], true);
    assert_eq!(results[5]["id"], results[0]["id"]);
    assert_eq!(results[6]["error"]["param"], "idempotency_key");
    assert_eq!(results[7]["error"]["code"], "invalid_request");
    assert_eq!(results[8]["amount"], "0.02");
    assert_eq!(results[8]["balance"], "0.92");
    assert_eq!(server.account("batchco").await["balance"], "0.92");
    assert_eq!(server.account("poor").await["balance"], "0.00");

    let (status, empty) = server.post("/v1/usage/batch", json!({"events": []})).await;
    assert_eq!((status, empty), (StatusCode::OK, json!({"results": []})));
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn grants_and_the_ledger() {
    let server = TestServer::start().await;
    server.create_account("ledgerco").await;
    let grant = || {
        server
            .request(Method::POST, "/v1/accounts/ledgerco/grants")
            .header("Idempotency-Key", "g1")
    };
    let response = grant()
        .json(&json!({"amount": "25.00", "reason": "goodwill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("idempotent-replayed").is_none());
    let credit: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        keys(&credit),
        sorted(&[
            "id",
            "object",
            "type",
            "amount",
            "available_amount",
            "balance_after",
            "available_balance_after",
            "description",
            "reference",
            "created_at",
        ])
    );
    assert_eq!(credit["object"], "transaction");
    assert_eq!(credit["type"], "grant");
    assert_eq!(credit["amount"], "25.00");
    assert_eq!(credit["available_amount"], "25.00");
    assert_eq!(credit["balance_after"], "25.00");
    assert_eq!(credit["available_balance_after"], "25.00");
    assert_eq!(credit["description"], "goodwill");
    assert_eq!(credit["reference"], serde_json::Value::Null);

    // The replay answers the same, says so, and moves nothing.
    let replay = grant()
        .json(&json!({"amount": "25.00", "reason": "goodwill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<serde_json::Value>().await.unwrap(), credit);
    assert_eq!(server.account("ledgerco").await["balance"], "25.00");

    let (status, debit) = server
        .post(
            "/v1/accounts/ledgerco/grants",
            json!({"amount": "-5.00", "reason": "correction"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (debit["amount"].as_str(), debit["balance_after"].as_str()),
        (Some("-5.00"), Some("20.00"))
    );
    server.usage("ledgerco", "email_finder", 1, "u1").await;

    let (status, page) = server.get("/v1/accounts/ledgerco/transactions").await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["usage", "grant", "grant"]);
    assert_eq!(page["data"][0]["amount"], "-0.03");
    assert_eq!(page["data"][0]["balance_after"], "19.97");
    assert_eq!(page["data"][0]["description"], "Email Finder × 1");
    assert_eq!(page["has_more"], false);

    let (_, first) = server.get("/v1/accounts/ledgerco/transactions?limit=1").await;
    assert_eq!(first["data"].as_array().unwrap().len(), 1);
    assert_eq!(first["has_more"], true);
    let cursor = first["data"][0]["id"].as_str().unwrap();
    let (_, rest) = server
        .get(&format!(
            "/v1/accounts/ledgerco/transactions?limit=2&starting_after={cursor}"
        ))
        .await;
    let amounts: Vec<&str> = rest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["-5.00", "25.00"]);
    assert_eq!(rest["has_more"], false);

    let (status, audit) = server.get("/v1/audit?limit=10").await;
    assert_eq!(status, StatusCode::OK);
    let entries = audit["data"].as_array().unwrap();
    // Newest first: two grants, then the account's creation.
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2]["action"], "account.created");
    assert_eq!(entries[2]["actor"], "api_key:operator");
    assert_eq!(entries[0]["object"], "audit_entry");
    assert_eq!(entries[0]["action"], "grant.created");
    assert_eq!(entries[0]["actor"], "api_key:operator");
    assert_eq!(entries[0]["account_id"], "ledgerco");
    assert!(entries[0]["after"].as_str().unwrap().contains("correction"));
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn keys_stored_hashed_authenticate_and_are_the_audit_actor() {
    let server = TestServer::start().await;
    let secret = tollgate_web::auth::generate_api_key();
    server
        .store
        .insert_api_key(ApiKeyRecord {
            id: "key_ci".to_owned(),
            key_hash: tollgate_web::auth::hash_api_key(&secret),
            label: "ci".to_owned(),
            created_at: START,
        })
        .await
        .unwrap();
    server.create_account("keyed").await;
    let response = server
        .client
        .post(server.url("/v1/accounts/keyed/grants"))
        .bearer_auth(&secret)
        .json(&json!({"amount": "1.00", "reason": "from ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let (_, audit) = server.get("/v1/audit").await;
    assert_eq!(audit["data"][0]["actor"], "api_key:key_ci");
}
