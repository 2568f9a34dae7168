//! Stripe webhooks: `Stripe-Signature` verification over the raw body, then a parse into
//! Tollgate's own [`PaymentEvent`] with only the fields Tollgate acts on.
//!
//! The signature is checked before the body is parsed at all, so nothing an attacker sends is
//! interpreted unless it was signed with the endpoint's secret.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tollgate_core::Micros;

use crate::port::{CheckoutSessionId, CustomerId, Payment, PaymentIntentId, PaymentMethodId, PaymentStatus};

/// Stripe's default tolerance between the signature's timestamp and now, both ways.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// Most `v1` signatures looked at in one header (Stripe sends one per active secret, so two
/// during a secret rotation); bounds the work a hostile header can cause.
const MAX_SIGNATURES: usize = 8;

/// Why a webhook request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The verifier was built without a secret.
    #[error("the webhook signing secret is empty")]
    EmptySecret,
    /// The `Stripe-Signature` header is missing parts or badly formed.
    #[error("malformed Stripe-Signature header: {0}")]
    MalformedHeader(&'static str),
    /// No `v1` signature matches the body: forged, tampered with, or another endpoint's secret.
    #[error("no valid signature")]
    BadSignature,
    /// The signature is valid but too far from now: possibly a replay.
    #[error("signature timestamp {timestamp} is more than {tolerance_secs} s from now ({now})")]
    OutsideTolerance {
        /// The header's `t`.
        timestamp: i64,
        /// The time it was checked at.
        now: i64,
        /// The tolerance applied.
        tolerance_secs: u64,
    },
    /// Correctly signed, but not an event this parser can read.
    #[error("invalid event payload: {0}")]
    InvalidPayload(String),
}

/// Checks `Stripe-Signature` headers with an endpoint's `whsec_…` secret.
#[derive(Clone)]
pub struct WebhookVerifier {
    secret: String,
    tolerance_secs: u64,
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("WebhookVerifier")
            .field("secret", &"[redacted]")
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl WebhookVerifier {
    /// A verifier for this endpoint secret (used as is, `whsec_` prefix included, as Stripe does).
    pub fn new(secret: impl Into<String>) -> Result<Self, WebhookError> {
        let secret = secret.into();
        if secret.is_empty() {
            return Err(WebhookError::EmptySecret);
        }
        Ok(WebhookVerifier {
            secret,
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
        })
    }

    /// Changes the accepted clock difference (default [`DEFAULT_TOLERANCE_SECS`]).
    pub fn with_tolerance(mut self, tolerance_secs: u64) -> Self {
        self.tolerance_secs = tolerance_secs;
        self
    }

    /// Verifies the raw body against the header, then parses it into a [`PaymentEvent`].
    pub fn verify(
        &self,
        payload: &[u8],
        signature_header: &str,
        now_unix: i64,
    ) -> Result<PaymentEvent, WebhookError> {
        self.verify_signature(payload, signature_header, now_unix)?;
        parse_event(payload)
    }

    /// Only the signature and timestamp check, for callers that parse the body themselves.
    pub fn verify_signature(
        &self,
        payload: &[u8],
        signature_header: &str,
        now_unix: i64,
    ) -> Result<(), WebhookError> {
        let header = SignatureHeader::parse(signature_header)?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()).map_err(|_| WebhookError::EmptySecret)?;
        // Signed as the header wrote the timestamp, over the body's exact bytes.
        mac.update(header.timestamp_text.as_bytes());
        mac.update(b".");
        mac.update(payload);
        let expected = mac.finalize().into_bytes();
        let mut matched = false;
        for candidate in &header.signatures {
            // Every candidate is compared in full, in constant time, so timing reveals nothing
            // about how close a forgery came; a wrong length simply never matches.
            matched |= bool::from(candidate.as_slice().ct_eq(expected.as_slice()));
        }
        if !matched {
            return Err(WebhookError::BadSignature);
        }
        if now_unix.abs_diff(header.timestamp) > self.tolerance_secs {
            return Err(WebhookError::OutsideTolerance {
                timestamp: header.timestamp,
                now: now_unix,
                tolerance_secs: self.tolerance_secs,
            });
        }
        Ok(())
    }
}

/// The parts of a `Stripe-Signature` header: `t=<unix>,v1=<hex>[,v1=<hex>…]` (other schemes,
/// such as Stripe's test-only `v0`, are ignored).
struct SignatureHeader<'a> {
    timestamp: i64,
    timestamp_text: &'a str,
    signatures: Vec<Vec<u8>>,
}

impl<'a> SignatureHeader<'a> {
    fn parse(header: &'a str) -> Result<Self, WebhookError> {
        let mut timestamp = None;
        let mut signatures = Vec::new();
        let mut saw_v1 = false;
        for part in header.split(',') {
            let Some((key, value)) = part.trim().split_once('=') else {
                return Err(WebhookError::MalformedHeader("every element must be key=value"));
            };
            match key {
                "t" => {
                    if timestamp.is_some() {
                        return Err(WebhookError::MalformedHeader("more than one timestamp"));
                    }
                    let parsed = value
                        .parse::<i64>()
                        .map_err(|_| WebhookError::MalformedHeader("the timestamp is not a number"))?;
                    timestamp = Some((parsed, value));
                }
                "v1" => {
                    saw_v1 = true;
                    // A value that is not hex cannot match; skip it rather than refuse the
                    // header, as a rotated-in secret's signature must still be found after it.
                    if signatures.len() < MAX_SIGNATURES
                        && let Ok(bytes) = hex::decode(value)
                    {
                        signatures.push(bytes);
                    }
                }
                _ => {}
            }
        }
        let Some((timestamp, timestamp_text)) = timestamp else {
            return Err(WebhookError::MalformedHeader("no timestamp"));
        };
        if !saw_v1 {
            return Err(WebhookError::MalformedHeader("no v1 signature"));
        }
        Ok(SignatureHeader {
            timestamp,
            timestamp_text,
            signatures,
        })
    }
}

/// A verified Stripe event, reduced to what Tollgate acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentEvent {
    /// `evt_…`: the same event may be delivered more than once; apply it once per id.
    pub id: String,
    /// When Stripe created the event (Unix seconds); events may arrive out of order.
    pub created: i64,
    /// What happened.
    pub kind: PaymentEventKind,
}

/// What a [`PaymentEvent`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentEventKind {
    /// `checkout.session.completed`: retrieve the session for the card and payment.
    CheckoutCompleted {
        /// The session.
        session: CheckoutSessionId,
        /// Its `client_reference_id` (Tollgate's reference).
        reference: Option<String>,
    },
    /// `checkout.session.expired`: the page can no longer be used.
    CheckoutExpired {
        /// The session.
        session: CheckoutSessionId,
        /// Its `client_reference_id` (Tollgate's reference).
        reference: Option<String>,
    },
    /// `payment_intent.succeeded`.
    PaymentSucceeded {
        /// The payment as the event carried it.
        payment: Payment,
    },
    /// `payment_intent.payment_failed` (status [`PaymentStatus::Failed`] with the reason).
    PaymentFailed {
        /// The payment as the event carried it.
        payment: Payment,
    },
    /// `charge.refunded`: some or all of a charge was refunded.
    ChargeRefunded {
        /// The charge's payment.
        intent: Option<PaymentIntentId>,
        /// The charge.
        charge: String,
        /// Everything refunded on the charge so far (cumulative, not this refund alone).
        amount_refunded: Micros,
    },
    /// `charge.dispute.created`: a chargeback was opened.
    DisputeCreated {
        /// The dispute (`dp_…`/`du_…`).
        dispute: String,
        /// The disputed charge's payment.
        intent: Option<PaymentIntentId>,
        /// The disputed charge.
        charge: String,
        /// The disputed amount.
        amount: Micros,
    },
    /// `charge.dispute.closed`.
    DisputeClosed {
        /// The dispute.
        dispute: String,
        /// The disputed charge's payment.
        intent: Option<PaymentIntentId>,
        /// The disputed charge.
        charge: String,
        /// The disputed amount.
        amount: Micros,
        /// True when the merchant keeps the money (`won`, or an inquiry closed as
        /// `warning_closed`); false when it is lost.
        won: bool,
    },
    /// `payment_method.detached`: a card was removed from its customer.
    PaymentMethodDetached {
        /// The card.
        card: PaymentMethodId,
        /// The customer it was detached from, when the event says.
        customer: Option<CustomerId>,
    },
    /// Anything else: acknowledge it and move on.
    Other {
        /// The event's `type`.
        event_type: String,
    },
}

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    created: i64,
    #[serde(rename = "type")]
    event_type: String,
    data: RawData,
}

#[derive(Deserialize)]
struct RawData {
    object: Value,
    #[serde(default)]
    previous_attributes: Option<Value>,
}

#[derive(Deserialize)]
struct RawSession {
    id: String,
    #[serde(default)]
    client_reference_id: Option<String>,
}

#[derive(Deserialize)]
struct RawPaymentIntent {
    id: String,
    amount: i64,
    status: String,
    #[serde(default)]
    customer: Option<Value>,
    #[serde(default)]
    payment_method: Option<Value>,
    #[serde(default)]
    latest_charge: Option<Value>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    last_payment_error: Option<RawError>,
    #[serde(default)]
    next_action: Option<Value>,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
struct RawCharge {
    id: String,
    #[serde(default)]
    payment_intent: Option<Value>,
    amount_refunded: i64,
}

#[derive(Deserialize)]
struct RawDispute {
    id: String,
    charge: Value,
    #[serde(default)]
    payment_intent: Option<Value>,
    amount: i64,
    status: String,
}

#[derive(Deserialize)]
struct RawPaymentMethod {
    id: String,
}

fn invalid(what: impl fmt::Display) -> WebhookError {
    WebhookError::InvalidPayload(what.to_string())
}

fn object<T: for<'de> Deserialize<'de>>(value: Value, event_type: &str) -> Result<T, WebhookError> {
    serde_json::from_value(value).map_err(|e| invalid(format_args!("{event_type}: {e}")))
}

/// The id of a field Stripe sends either as an id or, when expanded, as the object.
fn id_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(id) => Some(id.clone()),
        Value::Object(object) => object.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn micros(cents: i64) -> Result<Micros, WebhookError> {
    Micros::from_cents(cents).ok_or_else(|| invalid(format_args!("amount {cents} cents is out of range")))
}

fn payment(raw: RawPaymentIntent) -> Result<Payment, WebhookError> {
    let status = match raw.status.as_str() {
        "succeeded" => PaymentStatus::Succeeded,
        "requires_action" => PaymentStatus::RequiresAction {
            url: raw
                .next_action
                .as_ref()
                .and_then(|a| a.pointer("/redirect_to_url/url"))
                .and_then(Value::as_str)
                .map(str::to_string),
        },
        "requires_payment_method" => match &raw.last_payment_error {
            Some(error) => PaymentStatus::Failed {
                code: error
                    .code
                    .clone()
                    .or_else(|| error.error_type.clone())
                    .unwrap_or_else(|| "payment_failed".to_string()),
                decline_code: error.decline_code.clone(),
                message: error
                    .message
                    .clone()
                    .unwrap_or_else(|| "The payment was declined.".to_string()),
            },
            None => PaymentStatus::Pending,
        },
        "requires_confirmation" => PaymentStatus::Pending,
        "canceled" => PaymentStatus::Canceled,
        // `processing`, `requires_capture` and any status added later: not settled, so the
        // caller asks again rather than acting on a guess.
        _ => PaymentStatus::Processing,
    };
    Ok(Payment {
        intent: PaymentIntentId::new(raw.id),
        status,
        amount: micros(raw.amount)?,
        customer: id_of(raw.customer.as_ref()).map(CustomerId::new),
        payment_method: id_of(raw.payment_method.as_ref()).map(PaymentMethodId::new),
        charge: id_of(raw.latest_charge.as_ref()),
        metadata: raw.metadata.unwrap_or_default(),
    })
}

/// Parses an event body (already verified) into a [`PaymentEvent`].
fn parse_event(payload: &[u8]) -> Result<PaymentEvent, WebhookError> {
    let raw: RawEvent = serde_json::from_slice(payload).map_err(invalid)?;
    let RawEvent {
        id,
        created,
        event_type,
        data,
    } = raw;
    let kind = match event_type.as_str() {
        "checkout.session.completed" | "checkout.session.expired" => {
            let session: RawSession = object(data.object, &event_type)?;
            let (session, reference) = (CheckoutSessionId::new(session.id), session.client_reference_id);
            if event_type == "checkout.session.completed" {
                PaymentEventKind::CheckoutCompleted { session, reference }
            } else {
                PaymentEventKind::CheckoutExpired { session, reference }
            }
        }
        "payment_intent.succeeded" => PaymentEventKind::PaymentSucceeded {
            payment: payment(object(data.object, &event_type)?)?,
        },
        "payment_intent.payment_failed" => PaymentEventKind::PaymentFailed {
            payment: payment(object(data.object, &event_type)?)?,
        },
        "charge.refunded" => {
            let charge: RawCharge = object(data.object, &event_type)?;
            PaymentEventKind::ChargeRefunded {
                intent: id_of(charge.payment_intent.as_ref()).map(PaymentIntentId::new),
                charge: charge.id,
                amount_refunded: micros(charge.amount_refunded)?,
            }
        }
        "charge.dispute.created" | "charge.dispute.closed" => {
            let dispute: RawDispute = object(data.object, &event_type)?;
            let charge = id_of(Some(&dispute.charge))
                .ok_or_else(|| invalid(format_args!("{event_type}: the dispute names no charge")))?;
            let intent = id_of(dispute.payment_intent.as_ref()).map(PaymentIntentId::new);
            let amount = micros(dispute.amount)?;
            if event_type == "charge.dispute.created" {
                PaymentEventKind::DisputeCreated {
                    dispute: dispute.id,
                    intent,
                    charge,
                    amount,
                }
            } else {
                PaymentEventKind::DisputeClosed {
                    dispute: dispute.id,
                    intent,
                    charge,
                    amount,
                    won: matches!(dispute.status.as_str(), "won" | "warning_closed"),
                }
            }
        }
        "payment_method.detached" => {
            let method: RawPaymentMethod = object(data.object, &event_type)?;
            // The detached object no longer names its customer; the previous attributes do.
            let customer = data
                .previous_attributes
                .as_ref()
                .and_then(|p| id_of(p.get("customer")))
                .map(CustomerId::new);
            PaymentEventKind::PaymentMethodDetached {
                card: PaymentMethodId::new(method.id),
                customer,
            }
        }
        _ => PaymentEventKind::Other { event_type },
    };
    Ok(PaymentEvent { id, created, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_unit_test";
    const NOW: i64 = 1_700_000_000;

    fn sign(secret: &str, timestamp: i64, payload: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(payload);
        hex::encode(mac.finalize().into_bytes())
    }

    fn verifier() -> WebhookVerifier {
        WebhookVerifier::new(SECRET).expect("non-empty secret")
    }

    const BODY: &[u8] = br#"{"id":"evt_1","created":1700000000,"type":"customer.created","data":{"object":{"id":"cus_1"}},"extra":[1,2]}"#;

    #[test]
    fn accepts_a_valid_signature_and_ignores_unknown_types() {
        let header = format!("t={NOW},v1={}", sign(SECRET, NOW, BODY));
        let event = verifier().verify(BODY, &header, NOW + 10).expect("valid");
        assert_eq!(event.id, "evt_1");
        assert_eq!(
            event.kind,
            PaymentEventKind::Other {
                event_type: "customer.created".into()
            }
        );
    }

    #[test]
    fn rejects_malformed_headers() {
        for header in [
            "",
            "t=1",
            "v1=abcd",
            "t=x,v1=00",
            "t=1,t=1,v1=00",
            "garbage",
            "t=1,v1",
        ] {
            assert!(
                matches!(
                    verifier().verify_signature(BODY, header, NOW),
                    Err(WebhookError::MalformedHeader(_))
                ),
                "{header:?}"
            );
        }
    }

    #[test]
    fn any_matching_v1_is_enough_and_odd_ones_are_skipped() {
        let good = sign(SECRET, NOW, BODY);
        let header = format!(
            "t={NOW},v0=ignored,v1=zz-not-hex,v1={},v1={good}",
            "00".repeat(32)
        );
        assert!(verifier().verify_signature(BODY, &header, NOW).is_ok());
        // A truncated signature never matches.
        let header = format!("t={NOW},v1={}", &good[..32]);
        assert_eq!(
            verifier().verify_signature(BODY, &header, NOW),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn signs_the_timestamp_as_written() {
        // Zero-padded `t` is signed as written, not as re-formatted.
        let padded = format!("0{NOW}");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
        mac.update(format!("{padded}.").as_bytes());
        mac.update(BODY);
        let header = format!("t={padded},v1={}", hex::encode(mac.finalize().into_bytes()));
        assert!(verifier().verify_signature(BODY, &header, NOW).is_ok());
    }

    #[test]
    fn tolerance_applies_both_ways_and_is_configurable() {
        let header = format!("t={NOW},v1={}", sign(SECRET, NOW, BODY));
        assert!(verifier().verify_signature(BODY, &header, NOW + 300).is_ok());
        assert!(verifier().verify_signature(BODY, &header, NOW - 300).is_ok());
        for now in [NOW + 301, NOW - 301, i64::MAX, i64::MIN] {
            assert!(matches!(
                verifier().verify_signature(BODY, &header, now),
                Err(WebhookError::OutsideTolerance { .. })
            ));
        }
        let strict = verifier().with_tolerance(5);
        assert!(strict.verify_signature(BODY, &header, NOW + 6).is_err());
    }

    #[test]
    fn an_empty_secret_is_refused_and_the_secret_is_never_shown() {
        assert_eq!(WebhookVerifier::new("").err(), Some(WebhookError::EmptySecret));
        assert!(!format!("{:?}", verifier()).contains("unit_test"));
    }

    #[test]
    fn signed_garbage_is_an_invalid_payload() {
        for body in [
            &b"not json"[..],
            br#"{"id":"evt_1"}"#,
            br#"{"id":"evt","created":1,"type":"charge.refunded","data":{"object":{"id":"ch_1"}}}"#,
        ] {
            let header = format!("t={NOW},v1={}", sign(SECRET, NOW, body));
            assert!(matches!(
                verifier().verify(body, &header, NOW),
                Err(WebhookError::InvalidPayload(_))
            ));
        }
    }

    #[test]
    fn expanded_fields_give_their_id() {
        let expanded = serde_json::json!({ "id": "pi_1", "object": "payment_intent" });
        assert_eq!(id_of(Some(&expanded)), Some("pi_1".to_string()));
        assert_eq!(
            id_of(Some(&Value::String("pi_2".into()))),
            Some("pi_2".to_string())
        );
        assert_eq!(id_of(Some(&Value::Null)), None);
        assert_eq!(id_of(None), None);
    }
}
