//! The sandbox's records and their rendering as Stripe JSON objects.
//!
//! Field sets follow Stripe's API reference closely enough for async-stripe 1.0, whose types make
//! several fields mandatory (`livemode`, `created`, `billing_details`, `automatic_tax` …).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::cards::Behavior;

/// Stripe API version stamped on events (the one async-stripe 1.0.0-rc.10 is generated for).
pub(crate) const API_VERSION: &str = "2026-09-30.endive";

/// Metadata as stored: sorted for stable output.
pub(crate) type Metadata = BTreeMap<String, String>;

fn metadata_json(m: &Metadata) -> Value {
    json!(m)
}

fn client_secret(id: &str) -> String {
    format!(
        "{id}_secret_{}",
        crate::wire::new_id("s", 24).trim_start_matches("s_")
    )
}

/// A customer (`cus_…`).
#[derive(Debug, Clone)]
pub(crate) struct Customer {
    pub(crate) id: String,
    pub(crate) created: i64,
    pub(crate) email: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) phone: Option<String>,
    pub(crate) metadata: Metadata,
    pub(crate) default_payment_method: Option<String>,
    pub(crate) invoice_prefix: String,
}

impl Customer {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "customer",
            "address": null,
            "balance": 0,
            "created": self.created,
            "currency": null,
            "default_source": null,
            "delinquent": false,
            "description": self.description,
            "discount": null,
            "email": self.email,
            "invoice_prefix": self.invoice_prefix,
            "invoice_settings": {
                "custom_fields": null,
                "default_payment_method": self.default_payment_method,
                "footer": null,
                "rendering_options": null,
            },
            "livemode": false,
            "metadata": metadata_json(&self.metadata),
            "name": self.name,
            "next_invoice_sequence": 1,
            "phone": self.phone,
            "preferred_locales": [],
            "shipping": null,
            "tax_exempt": "none",
            "test_clock": null,
        })
    }
}

/// What the sandbox remembers about a card (never the full number).
#[derive(Debug, Clone)]
pub(crate) struct Card {
    pub(crate) brand: &'static str,
    pub(crate) last4: String,
    pub(crate) exp_month: u32,
    pub(crate) exp_year: u32,
    pub(crate) fingerprint: String,
    pub(crate) behavior: Behavior,
    /// Set once the card went through 3-D Secure while being saved for off-session use.
    pub(crate) authenticated_for_off_session: bool,
}

impl Card {
    fn checks() -> Value {
        json!({
            "address_line1_check": null,
            "address_postal_code_check": null,
            "cvc_check": "pass",
        })
    }

    fn payment_method_card(&self) -> Value {
        json!({
            "brand": self.brand,
            "checks": Self::checks(),
            "country": "US",
            "display_brand": self.brand,
            "exp_month": self.exp_month,
            "exp_year": self.exp_year,
            "fingerprint": self.fingerprint,
            "funding": "credit",
            "generated_from": null,
            "last4": self.last4,
            "networks": { "available": [self.brand], "preferred": null },
            "regulated_status": "unregulated",
            "three_d_secure_usage": { "supported": true },
            "wallet": null,
        })
    }

    fn charge_details(&self, three_d_secure: bool) -> Value {
        json!({
            "card": {
                "amount_authorized": null,
                "brand": self.brand,
                "checks": Self::checks(),
                "country": "US",
                "exp_month": self.exp_month,
                "exp_year": self.exp_year,
                "fingerprint": self.fingerprint,
                "funding": "credit",
                "installments": null,
                "last4": self.last4,
                "mandate": null,
                "network": self.brand,
                "network_token": { "used": false },
                "three_d_secure": if three_d_secure {
                    json!({ "authentication_flow": "challenge", "result": "authenticated", "version": "2.2.0" })
                } else {
                    Value::Null
                },
                "wallet": null,
            },
            "type": "card",
        })
    }
}

fn billing_details(name: &Option<String>) -> Value {
    json!({
        "address": {
            "city": null, "country": null, "line1": null, "line2": null,
            "postal_code": null, "state": null,
        },
        "email": null,
        "name": name,
        "phone": null,
        "tax_id": null,
    })
}

/// A card payment method (`pm_…`).
#[derive(Debug, Clone)]
pub(crate) struct PaymentMethod {
    pub(crate) id: String,
    pub(crate) created: i64,
    pub(crate) seq: u64,
    pub(crate) customer: Option<String>,
    pub(crate) card: Card,
    pub(crate) billing_name: Option<String>,
    pub(crate) metadata: Metadata,
}

impl PaymentMethod {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": billing_details(&self.billing_name),
            "card": self.card.payment_method_card(),
            "created": self.created,
            "customer": self.customer,
            "livemode": false,
            "metadata": metadata_json(&self.metadata),
            "type": "card",
        })
    }
}

/// Status of a setup or payment intent, with Stripe's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntentStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresAction,
    Succeeded,
    Canceled,
}

impl IntentStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            IntentStatus::RequiresPaymentMethod => "requires_payment_method",
            IntentStatus::RequiresConfirmation => "requires_confirmation",
            IntentStatus::RequiresAction => "requires_action",
            IntentStatus::Succeeded => "succeeded",
            IntentStatus::Canceled => "canceled",
        }
    }
}

/// A setup intent (`seti_…`), created by Checkout in setup mode.
#[derive(Debug, Clone)]
pub(crate) struct SetupIntent {
    pub(crate) id: String,
    pub(crate) created: i64,
    pub(crate) client_secret: String,
    pub(crate) customer: Option<String>,
    pub(crate) payment_method: Option<String>,
    pub(crate) status: IntentStatus,
    pub(crate) metadata: Metadata,
    pub(crate) last_setup_error: Option<Value>,
}

impl SetupIntent {
    pub(crate) fn new(id: String, created: i64, customer: Option<String>, metadata: Metadata) -> Self {
        SetupIntent {
            client_secret: client_secret(&id),
            id,
            created,
            customer,
            payment_method: None,
            status: IntentStatus::RequiresPaymentMethod,
            metadata,
            last_setup_error: None,
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "setup_intent",
            "application": null,
            "automatic_payment_methods": null,
            "cancellation_reason": null,
            "client_secret": self.client_secret,
            "created": self.created,
            "customer": self.customer,
            "description": null,
            "flow_directions": null,
            "last_setup_error": self.last_setup_error,
            "latest_attempt": null,
            "livemode": false,
            "mandate": null,
            "metadata": metadata_json(&self.metadata),
            "next_action": null,
            "on_behalf_of": null,
            "payment_method": self.payment_method,
            "payment_method_configuration_details": null,
            "payment_method_options": {
                "card": { "mandate_options": null, "network": null, "request_three_d_secure": "automatic" }
            },
            "payment_method_types": ["card"],
            "single_use_mandate": null,
            "status": self.status.as_str(),
            "usage": "off_session",
        })
    }
}

/// A payment intent (`pi_…`).
#[derive(Debug, Clone)]
pub(crate) struct PaymentIntent {
    pub(crate) id: String,
    pub(crate) created: i64,
    /// Creation order, for lists (newest first, as Stripe pages them); not on the wire.
    pub(crate) seq: u64,
    pub(crate) client_secret: String,
    pub(crate) amount: i64,
    pub(crate) amount_received: i64,
    pub(crate) currency: String,
    pub(crate) customer: Option<String>,
    pub(crate) payment_method: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) metadata: Metadata,
    pub(crate) setup_future_usage: Option<String>,
    pub(crate) status: IntentStatus,
    pub(crate) latest_charge: Option<String>,
    pub(crate) last_payment_error: Option<Value>,
    pub(crate) next_action: Option<Value>,
    pub(crate) canceled_at: Option<i64>,
    pub(crate) cancellation_reason: Option<String>,
    pub(crate) return_url: Option<String>,
}

impl PaymentIntent {
    pub(crate) fn new(id: String, created: i64, amount: i64, currency: String) -> Self {
        PaymentIntent {
            client_secret: client_secret(&id),
            id,
            created,
            seq: 0,
            amount,
            amount_received: 0,
            currency,
            customer: None,
            payment_method: None,
            description: None,
            metadata: Metadata::new(),
            setup_future_usage: None,
            status: IntentStatus::RequiresPaymentMethod,
            latest_charge: None,
            last_payment_error: None,
            next_action: None,
            canceled_at: None,
            cancellation_reason: None,
            return_url: None,
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "payment_intent",
            "amount": self.amount,
            "amount_capturable": 0,
            "amount_details": null,
            "amount_received": self.amount_received,
            "application": null,
            "application_fee_amount": null,
            "automatic_payment_methods": null,
            "canceled_at": self.canceled_at,
            "cancellation_reason": self.cancellation_reason,
            "capture_method": "automatic",
            "client_secret": self.client_secret,
            "confirmation_method": "automatic",
            "created": self.created,
            "currency": self.currency,
            "customer": self.customer,
            "description": self.description,
            "last_payment_error": self.last_payment_error,
            "latest_charge": self.latest_charge,
            "livemode": false,
            "metadata": metadata_json(&self.metadata),
            "next_action": self.next_action,
            "on_behalf_of": null,
            "payment_method": self.payment_method,
            "payment_method_configuration_details": null,
            "payment_method_options": {
                "card": { "installments": null, "mandate_options": null, "network": null, "request_three_d_secure": "automatic" }
            },
            "payment_method_types": ["card"],
            "processing": null,
            "receipt_email": null,
            "review": null,
            "setup_future_usage": self.setup_future_usage,
            "shipping": null,
            "source": null,
            "statement_descriptor": null,
            "statement_descriptor_suffix": null,
            "status": self.status.as_str(),
            "transfer_data": null,
            "transfer_group": null,
        })
    }
}

/// A charge (`ch_…`), one per payment attempt.
#[derive(Debug, Clone)]
pub(crate) struct Charge {
    pub(crate) id: String,
    pub(crate) created: i64,
    pub(crate) amount: i64,
    pub(crate) amount_refunded: i64,
    pub(crate) currency: String,
    pub(crate) customer: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) metadata: Metadata,
    pub(crate) payment_intent: String,
    pub(crate) payment_method: String,
    pub(crate) card: Card,
    pub(crate) billing_name: Option<String>,
    pub(crate) three_d_secure: bool,
    /// `None` when the charge succeeded.
    pub(crate) failure: Option<crate::cards::Decline>,
    pub(crate) disputed: bool,
}

impl Charge {
    pub(crate) fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    pub(crate) fn to_json(&self) -> Value {
        let ok = self.succeeded();
        let outcome = match &self.failure {
            None => json!({
                "network_status": "approved_by_network",
                "reason": null,
                "risk_level": "normal",
                "risk_score": 32,
                "seller_message": "Payment complete.",
                "type": "authorized",
            }),
            Some(d) => json!({
                "network_status": "declined_by_network",
                "reason": d.decline_code,
                "risk_level": "normal",
                "risk_score": 32,
                "seller_message": "The bank did not return any further details with this decline.",
                "type": "issuer_declined",
            }),
        };
        json!({
            "id": self.id,
            "object": "charge",
            "amount": self.amount,
            "amount_captured": if ok { self.amount } else { 0 },
            "amount_refunded": self.amount_refunded,
            "application": null,
            "application_fee": null,
            "application_fee_amount": null,
            "balance_transaction": if ok { Value::from(format!("txn_{}", &self.id[3..])) } else { Value::Null },
            "billing_details": billing_details(&self.billing_name),
            "calculated_statement_descriptor": "TOLLGATE SANDBOX",
            "captured": ok,
            "created": self.created,
            "currency": self.currency,
            "customer": self.customer,
            "description": self.description,
            "disputed": self.disputed,
            "failure_balance_transaction": null,
            "failure_code": self.failure.map(|d| d.code),
            "failure_message": self.failure.map(|d| d.message),
            "fraud_details": {},
            "livemode": false,
            "metadata": metadata_json(&self.metadata),
            "on_behalf_of": null,
            "outcome": outcome,
            "paid": ok,
            "payment_intent": self.payment_intent,
            "payment_method": self.payment_method,
            "payment_method_details": self.card.charge_details(self.three_d_secure),
            "receipt_email": null,
            "receipt_number": null,
            "receipt_url": null,
            "refunded": ok && self.amount_refunded >= self.amount,
            "review": null,
            "shipping": null,
            "source_transfer": null,
            "statement_descriptor": null,
            "statement_descriptor_suffix": null,
            "status": if ok { "succeeded" } else { "failed" },
            "transfer_data": null,
            "transfer_group": null,
        })
    }
}

/// A refund (`re_…`).
#[derive(Debug, Clone)]
pub(crate) struct Refund {
    pub(crate) id: String,
    pub(crate) created: i64,
    pub(crate) amount: i64,
    pub(crate) currency: String,
    pub(crate) charge: String,
    pub(crate) payment_intent: String,
    pub(crate) reason: Option<String>,
    pub(crate) metadata: Metadata,
}

impl Refund {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "refund",
            "amount": self.amount,
            "balance_transaction": format!("txn_{}", &self.id[3..]),
            "charge": self.charge,
            "created": self.created,
            "currency": self.currency,
            "destination_details": null,
            "metadata": metadata_json(&self.metadata),
            "payment_intent": self.payment_intent,
            "reason": self.reason,
            "receipt_number": null,
            "source_transfer_reversal": null,
            "status": "succeeded",
            "transfer_reversal": null,
        })
    }
}

/// A dispute (`dp_…`), opened through the sandbox's admin endpoints.
#[derive(Debug, Clone)]
pub(crate) struct Dispute {
    pub(crate) id: String,
    pub(crate) created: i64,
    pub(crate) amount: i64,
    pub(crate) currency: String,
    pub(crate) charge: String,
    pub(crate) payment_intent: String,
    pub(crate) brand: &'static str,
    pub(crate) reason: String,
    pub(crate) status: String,
}

impl Dispute {
    pub(crate) fn to_json(&self) -> Value {
        let evidence_fields = [
            "access_activity_log",
            "billing_address",
            "cancellation_policy",
            "cancellation_policy_disclosure",
            "cancellation_rebuttal",
            "customer_communication",
            "customer_email_address",
            "customer_name",
            "customer_purchase_ip",
            "customer_signature",
            "duplicate_charge_documentation",
            "duplicate_charge_explanation",
            "duplicate_charge_id",
            "product_description",
            "receipt",
            "refund_policy",
            "refund_policy_disclosure",
            "refund_refusal_explanation",
            "service_date",
            "service_documentation",
            "shipping_address",
            "shipping_carrier",
            "shipping_date",
            "shipping_documentation",
            "shipping_tracking_number",
            "uncategorized_file",
            "uncategorized_text",
        ];
        let mut evidence: serde_json::Map<String, Value> = evidence_fields
            .iter()
            .map(|f| ((*f).to_string(), Value::Null))
            .collect();
        evidence.insert("enhanced_evidence".into(), json!({}));
        json!({
            "id": self.id,
            "object": "dispute",
            "amount": self.amount,
            "balance_transactions": [],
            "charge": self.charge,
            "created": self.created,
            "currency": self.currency,
            "enhanced_eligibility_types": [],
            "evidence": evidence,
            "evidence_details": {
                "due_by": self.created + 7 * 24 * 3600,
                "enhanced_eligibility": {},
                "has_evidence": false,
                "past_due": false,
                "submission_count": 0,
            },
            "is_charge_refundable": false,
            "livemode": false,
            "metadata": {},
            "network_reason_code": "10.4",
            "payment_intent": self.payment_intent,
            "payment_method_details": {
                "card": { "brand": self.brand, "case_type": "chargeback", "network": self.brand, "network_reason_code": "10.4" },
                "type": "card",
            },
            "reason": self.reason,
            "status": self.status,
        })
    }
}

/// Checkout mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Setup,
    Payment,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Setup => "setup",
            Mode::Payment => "payment",
        }
    }
}

/// Checkout session status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionStatus {
    Open,
    Complete,
    Expired,
}

impl SessionStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Open => "open",
            SessionStatus::Complete => "complete",
            SessionStatus::Expired => "expired",
        }
    }
}

/// One line of a payment-mode Checkout session.
#[derive(Debug, Clone)]
pub(crate) struct LineItem {
    pub(crate) name: String,
    pub(crate) unit_amount: i64,
    pub(crate) quantity: i64,
}

/// A card typed on the hosted page that awaits its 3-D Secure challenge.
#[derive(Debug, Clone)]
pub(crate) struct PendingCard {
    pub(crate) card: Card,
    pub(crate) billing_name: Option<String>,
}

/// A Checkout session (`cs_test_…`).
#[derive(Debug, Clone)]
pub(crate) struct CheckoutSession {
    pub(crate) id: String,
    pub(crate) created: i64,
    pub(crate) expires_at: i64,
    pub(crate) url: String,
    pub(crate) mode: Mode,
    pub(crate) status: SessionStatus,
    pub(crate) paid: bool,
    pub(crate) customer: Option<String>,
    pub(crate) customer_email: Option<String>,
    pub(crate) customer_creation: Option<String>,
    pub(crate) currency: Option<String>,
    pub(crate) line_items: Vec<LineItem>,
    pub(crate) success_url: Option<String>,
    pub(crate) cancel_url: Option<String>,
    pub(crate) metadata: Metadata,
    pub(crate) client_reference_id: Option<String>,
    /// `allowed_payment_method_types[]` / `excluded_payment_method_types[]` as given (`None`:
    /// not given), echoed back like Stripe does; only `card` can ever be offered.
    pub(crate) allowed_payment_method_types: Option<Vec<String>>,
    pub(crate) excluded_payment_method_types: Option<Vec<String>>,
    pub(crate) setup_intent: Option<String>,
    pub(crate) payment_intent: Option<String>,
    pub(crate) pi_setup_future_usage: Option<String>,
    pub(crate) pi_metadata: Metadata,
    pub(crate) pi_description: Option<String>,
    pub(crate) pending: Option<PendingCard>,
    pub(crate) billing_name: Option<String>,
}

impl CheckoutSession {
    /// Sum of the line items in cents (`None` in setup mode).
    pub(crate) fn amount_total(&self) -> Option<i64> {
        match self.mode {
            Mode::Setup => None,
            Mode::Payment => Some(
                self.line_items
                    .iter()
                    .map(|l| l.unit_amount.saturating_mul(l.quantity))
                    .sum(),
            ),
        }
    }

    pub(crate) fn to_json(&self, customer_email: Option<&str>) -> Value {
        let amount = self.amount_total();
        let payment_status = match (self.mode, self.paid) {
            (Mode::Setup, _) => "no_payment_required",
            (Mode::Payment, true) => "paid",
            (Mode::Payment, false) => "unpaid",
        };
        let complete = self.status == SessionStatus::Complete;
        let customer_details = if complete {
            json!({
                "address": null,
                "email": customer_email.map(str::to_string).or_else(|| self.customer_email.clone()),
                "name": self.billing_name,
                "phone": null,
                "tax_exempt": "none",
                "tax_ids": [],
            })
        } else {
            Value::Null
        };
        json!({
            "id": self.id,
            "object": "checkout.session",
            "adaptive_pricing": null,
            "after_expiration": null,
            "allow_promotion_codes": null,
            "allowed_payment_method_types": self.allowed_payment_method_types,
            "amount_subtotal": amount,
            "amount_total": amount,
            "automatic_tax": { "enabled": false, "liability": null, "provider": null, "status": null },
            "billing_address_collection": null,
            "cancel_url": self.cancel_url,
            "client_reference_id": self.client_reference_id,
            "client_secret": null,
            "collected_information": null,
            "consent": null,
            "consent_collection": null,
            "created": self.created,
            "currency": self.currency,
            "custom_fields": [],
            "custom_text": {
                "after_submit": null,
                "shipping_address": null,
                "submit": null,
                "terms_of_service_acceptance": null,
            },
            "customer": self.customer,
            "customer_creation": self.customer_creation,
            "customer_details": customer_details,
            "customer_email": self.customer_email,
            "discounts": [],
            "excluded_payment_method_types": self.excluded_payment_method_types,
            "expires_at": self.expires_at,
            "invoice": null,
            "invoice_creation": null,
            "livemode": false,
            "locale": null,
            "metadata": metadata_json(&self.metadata),
            "mode": self.mode.as_str(),
            "payment_intent": self.payment_intent,
            "payment_link": null,
            "payment_method_collection": "always",
            "payment_method_configuration_details": null,
            "payment_method_options": null,
            "payment_method_types": ["card"],
            "payment_status": payment_status,
            "phone_number_collection": { "enabled": false },
            "recovered_from": null,
            "saved_payment_method_options": null,
            "setup_intent": self.setup_intent,
            "shipping_address_collection": null,
            "shipping_cost": null,
            "shipping_options": [],
            "status": self.status.as_str(),
            "submit_type": null,
            "subscription": null,
            "success_url": self.success_url,
            "total_details": if self.mode == Mode::Payment {
                json!({ "amount_discount": 0, "amount_shipping": 0, "amount_tax": 0 })
            } else {
                Value::Null
            },
            "ui_mode": "hosted",
            "url": if self.status == SessionStatus::Open { Value::from(self.url.clone()) } else { Value::Null },
            "wallet_options": null,
        })
    }
}

/// How far an event's webhook delivery got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting in the queue (or no endpoint was configured yet).
    Pending,
    /// Held back by the `reorder` fault.
    Held,
    /// Skipped by the `drop_next` fault.
    Dropped,
    /// Being retried after a failure.
    Retrying,
    /// Acknowledged with a 2xx.
    Delivered,
    /// Every attempt failed.
    Failed,
}

/// An event (`evt_…`); its JSON is rendered once so every delivery sends identical bytes.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) id: String,
    pub(crate) type_: String,
    pub(crate) seq: u64,
    pub(crate) created: i64,
    pub(crate) body: std::sync::Arc<str>,
    pub(crate) delivery: DeliveryStatus,
    pub(crate) attempts: u32,
}
