//! Invoice billing over HTTP: a Sales plan puts an account on invoices; at the cycle end its
//! usage is closed into a numbered invoice (JSON, HTML, PDF); past the net terms usage is
//! refused with `invoice_overdue` until the invoice is marked paid or paid by card.

mod common;

use common::payments::{CARD_ATTACH_THEN_FAIL, CARD_OK, charges};
use common::{TestServer, assert_error};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use time::Duration;

async fn invoice_plan(server: &TestServer, account: &str, net_terms_days: u16) {
    let (status, plan) = server
        .send(
            server
                .request(Method::PUT, &format!("/v1/accounts/{account}/plan"))
                .json(&json!({"billing_mode": "invoice", "credit_limit": "500.00",
                              "prices": {"email_finder": "0.010", "export": "0.0555"},
                              "net_terms_days": net_terms_days})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{plan}");
}

/// Moves the clock a cycle and a bit on and runs the closer as the server's task does.
async fn close_the_cycle(server: &TestServer) -> usize {
    server.clock.advance(Duration::days(32));
    tollgate_web::close_due_invoices(server.store.as_ref())
        .await
        .unwrap()
}

async fn only_invoice(server: &TestServer, account: &str) -> Value {
    let (status, list) = server.get(&format!("/v1/accounts/{account}/invoices")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["has_more"], false);
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{list}");
    data[0].clone()
}

async fn document(server: &TestServer, path: &str, accept: &str) -> (StatusCode, String, Vec<u8>) {
    let response = server
        .request(Method::GET, path)
        .header(header::ACCEPT, accept)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn an_invoice_is_closed_shown_blocks_when_overdue_and_is_marked_paid() {
    let server = TestServer::start().await;
    server.create_account("bigco").await;
    invoice_plan(&server, "bigco", 10).await;
    for (action, quantity, key) in [
        ("email_finder", 120, "u1"),
        ("export", 3, "u2"),
        ("email_finder", 80, "u3"),
    ] {
        let (status, body) = server.usage("bigco", action, quantity, key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, empty) = server.get("/v1/accounts/bigco/invoices").await;
    assert_eq!(empty["data"], json!([]), "nothing before the cycle ends");

    assert_eq!(close_the_cycle(&server).await, 1);
    assert_eq!(close_the_cycle_again(&server).await, 0, "closed once");
    let invoice = only_invoice(&server, "bigco").await;
    let id = invoice["id"].as_str().unwrap().to_owned();
    assert_eq!(invoice["number"], "INV-000001");
    assert_eq!(invoice["status"], "open");
    assert_eq!(
        invoice["lines"],
        json!([
            {"action": "email_finder", "description": "Email Finder", "quantity": 200,
             "unit_price": "0.01", "amount": "2.00"},
            {"action": "export", "description": "Export", "quantity": 3,
             "unit_price": "0.0555", "amount": "0.1665"},
        ])
    );
    assert_eq!(invoice["subtotal"], "2.1665");
    assert_eq!(invoice["amount_due"], "2.16");
    assert_eq!(invoice["carried_forward"], "0.0065");
    assert_eq!(invoice["credit_applied"], "0.00");
    let (status, fetched) = server.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, invoice);
    assert_eq!(
        server.event_types("bigco", "invoice.").await,
        vec!["invoice.created"]
    );

    // The document, as a page and as a PDF.
    let path = invoice["document_url"].as_str().unwrap().to_owned();
    let (status, content_type, html) = document(&server, &path, "text/html").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = String::from_utf8(html).unwrap();
    for expected in ["INV-000001", "Email Finder", "$0.0555", "Amount due", "$2.16"] {
        assert!(html.contains(expected), "missing {expected:?}");
    }
    let (status, content_type, pdf) = document(&server, &path, "application/pdf").await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, "application/pdf")
    );
    assert!(pdf.starts_with(b"%PDF-"));

    // Within the terms usage goes on; past them it is refused, with nothing charged.
    let due = time::OffsetDateTime::parse(
        invoice["due_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    server.clock.set(due - Duration::minutes(1));
    assert_eq!(
        server.usage("bigco", "email_finder", 1, "u4").await.0,
        StatusCode::OK
    );
    server.clock.set(due);
    let before = server.account("bigco").await["balance"].clone();
    let refused = server.usage("bigco", "email_finder", 1, "u5").await;
    assert_error(&refused, StatusCode::PAYMENT_REQUIRED, "invoice_overdue", None);
    assert!(refused.1["error"]["message"].as_str().unwrap().contains("due"));
    assert_eq!(server.account("bigco").await["balance"], before);

    // Bad input changes nothing; a bank transfer pays it and unblocks the account.
    let long = "x".repeat(201);
    let (status, body) = server
        .post(
            &format!("/v1/invoices/{id}/mark_paid"),
            json!({"reference": long}),
        )
        .await;
    assert_error(
        &(status, body),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("reference"),
    );
    assert_error(
        &server.post("/v1/invoices/inv_nope/mark_paid", json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &server.post(&format!("/v1/invoices/{id}/pay"), json!({})).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        None,
    );
    let (status, paid) = server
        .post(
            &format!("/v1/invoices/{id}/mark_paid"),
            json!({"reference": "WIRE-7"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["paid_by"], "bank_transfer");
    assert_eq!(paid["payment_reference"], "WIRE-7");
    let (status, again) = server
        .post(&format!("/v1/invoices/{id}/mark_paid"), json!({}))
        .await;
    assert_eq!(
        (status, &again),
        (StatusCode::OK, &paid),
        "marking twice changes nothing"
    );
    assert_eq!(
        server.usage("bigco", "email_finder", 1, "u5").await.0,
        StatusCode::OK
    );

    let (_, lines) = server.get("/v1/accounts/bigco/transactions?limit=100").await;
    let payments: Vec<_> = lines["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["type"] == "invoice_payment")
        .collect();
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["amount"], "2.16");
    assert_eq!(
        server.event_types("bigco", "invoice.").await,
        vec!["invoice.created", "invoice.paid"]
    );
    let (_, audit) = server.get("/v1/audit?limit=100").await;
    assert!(
        audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["action"] == "invoice.marked_paid"),
        "{audit}"
    );
    server.assert_ledger_clean().await;
}

async fn close_the_cycle_again(server: &TestServer) -> usize {
    tollgate_web::close_due_invoices(server.store.as_ref())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_invoice_is_paid_off_session_with_the_card_and_a_failed_charge_can_be_retried() {
    let server = TestServer::start_with_payments().await;
    server.create_account("carded").await;
    server.add_card("carded", CARD_ATTACH_THEN_FAIL).await;
    invoice_plan(&server, "carded", 30).await;
    assert_eq!(
        server.usage("carded", "email_finder", 1234, "u1").await.0,
        StatusCode::OK
    );
    assert_eq!(close_the_cycle(&server).await, 1);
    let invoice = only_invoice(&server, "carded").await;
    let id = invoice["id"].as_str().unwrap().to_owned();
    assert_eq!(invoice["amount_due"], "12.34");

    // The card declines: the invoice stays open, nothing is credited.
    let (status, failed) = server.post(&format!("/v1/invoices/{id}/pay"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["payment"]["status"], "failed", "{failed}");
    assert_eq!(failed["invoice"]["status"], "open");
    let balance = server.account("carded").await["balance"].clone();
    assert_eq!(balance, "-12.34");

    // A new card, a new attempt: paid once, by card.
    server.add_card("carded", CARD_OK).await;
    let (status, paid) = server.post(&format!("/v1/invoices/{id}/pay"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["payment"]["status"], "succeeded", "{paid}");
    assert_eq!(paid["payment"]["amount"], "12.34");
    assert_eq!(paid["invoice"]["status"], "paid");
    assert_eq!(paid["invoice"]["paid_by"], "card");
    assert_eq!(paid["invoice"]["payment_reference"], paid["payment"]["id"]);
    assert_eq!(server.account("carded").await["balance"], "0.00");
    assert_error(
        &server.post(&format!("/v1/invoices/{id}/pay"), json!({})).await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    let sandbox = server.sandbox.as_ref().unwrap();
    assert_eq!(charges(sandbox), (2, 1), "one declined attempt, one charge");
    let (_, lines) = server.get("/v1/accounts/carded/transactions?limit=100").await;
    let credit = lines["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["amount"] == "12.34")
        .cloned()
        .unwrap();
    assert!(
        credit["description"].as_str().unwrap().contains("INV-000001"),
        "{credit}"
    );
    assert_eq!(
        server.event_types("carded", "invoice.").await,
        vec!["invoice.created", "invoice.paid"]
    );
    server.assert_ledger_clean().await;
}
