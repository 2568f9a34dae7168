//! The sandbox's in-memory state and the Stripe behaviour that changes it.
//!
//! Every operation runs under one mutex and parses + validates its parameters before touching
//! anything, so a rejected request never leaves a partial effect behind. The operations live in
//! submodules by resource; this module holds the store, events, expansion and idempotency.

mod checkout;
mod customers;
mod payments;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::cards::{Behavior, Decline};
use crate::faults::{ApiFault, WebhookFaults};
use crate::objects::{
    API_VERSION, Card, Charge, CheckoutSession, Customer, DeliveryStatus, Dispute, Event, IntentStatus,
    LineItem, Metadata, Mode, PaymentIntent, PaymentMethod, PendingCard, Refund, SessionStatus, SetupIntent,
};
use crate::webhooks::DeliveryRecord;
use crate::wire::{ApiError, Params, display_path, format_amount, new_id, now};

/// How many objects of one kind the sandbox keeps before refusing to create more.
const MAX_OBJECTS_PER_KIND: usize = 100_000;
/// How many idempotency keys are remembered (Stripe keeps them 24 h).
const MAX_IDEMPOTENCY_KEYS: usize = 10_000;
const IDEMPOTENCY_TTL_SECS: i64 = 24 * 3600;
/// How many delivery attempts are kept for inspection.
const MAX_DELIVERY_RECORDS: usize = 1_000;
/// Checkout sessions expire after 24 h by default, as on Stripe.
const SESSION_TTL_SECS: i64 = 24 * 3600;
/// Stripe's bounds on a card payment's amount, in cents.
const MIN_AMOUNT: i64 = 50;
const MAX_AMOUNT: i64 = 99_999_999;

/// Message shown and returned when a 3-D Secure challenge is failed.
pub(crate) const AUTH_FAILED_MESSAGE: &str = "We are unable to authenticate your payment method. Please choose a different payment method and try again.";

/// Which API request caused an event (`event.request`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    pub(crate) request_id: Option<String>,
    pub(crate) idempotency_key: Option<String>,
}

/// A remembered idempotent request.
#[derive(Debug, Clone)]
pub(crate) enum IdemEntry {
    InProgress {
        created: i64,
    },
    Done {
        endpoint: String,
        fingerprint: Vec<(String, String)>,
        created: i64,
        status: u16,
        body: axum::body::Bytes,
    },
}

impl IdemEntry {
    fn created(&self) -> i64 {
        match self {
            IdemEntry::InProgress { created, .. } | IdemEntry::Done { created, .. } => *created,
        }
    }
}

/// What the hosted card page should do after a submission.
#[derive(Debug)]
pub(crate) enum PageOutcome {
    /// Go to this URL (303).
    Redirect(String),
    /// Show the 3-D Secure challenge.
    Challenge,
    /// Show the card form again with this error.
    Error(String),
}

/// A card as typed on the hosted page, already validated.
#[derive(Debug, Clone)]
pub(crate) struct CardInput {
    pub(crate) number: String,
    pub(crate) exp_month: u32,
    pub(crate) exp_year: u32,
    pub(crate) billing_name: Option<String>,
}

/// Everything the sandbox stores.
#[derive(Debug, Default)]
pub(crate) struct State {
    seq: u64,
    pub(crate) public_base: String,
    pub(crate) webhook_url: Option<String>,
    pub(crate) max_events: usize,
    customers: HashMap<String, Customer>,
    payment_methods: HashMap<String, PaymentMethod>,
    setup_intents: HashMap<String, SetupIntent>,
    payment_intents: HashMap<String, PaymentIntent>,
    charges: HashMap<String, Charge>,
    refunds: HashMap<String, Refund>,
    disputes: HashMap<String, Dispute>,
    sessions: HashMap<String, CheckoutSession>,
    pub(crate) events: HashMap<String, Event>,
    pub(crate) event_order: VecDeque<String>,
    idempotency: HashMap<String, (u64, IdemEntry)>,
    idempotency_order: VecDeque<(u64, String)>,
    pub(crate) delivery_queue: VecDeque<String>,
    pub(crate) held: Vec<String>,
    pub(crate) deliveries: VecDeque<DeliveryRecord>,
    pub(crate) webhook_faults: WebhookFaults,
    pub(crate) api_faults: VecDeque<ApiFault>,
    /// Set when events were queued, so the caller wakes the deliverer after unlocking.
    pub(crate) wake: bool,
}

fn check_capacity<T>(map: &HashMap<String, T>) -> Result<(), ApiError> {
    if map.len() >= MAX_OBJECTS_PER_KIND {
        return Err(ApiError::api("The sandbox's object limit was reached; reset it."));
    }
    Ok(())
}

fn currency_param(params: &mut Params, path: &[&str]) -> Result<Option<String>, ApiError> {
    match params.str(path)? {
        None => Ok(None),
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Ok(Some(c.to_ascii_lowercase()))
        }
        Some(c) => Err(ApiError::invalid_param(
            &display_path(path),
            format!("Invalid currency: {c}. Stripe currencies are three-letter ISO codes."),
        )),
    }
}

fn check_amount(amount: i64, currency: &str, param: &str) -> Result<(), ApiError> {
    if amount < MIN_AMOUNT {
        return Err(ApiError::invalid_param(
            param,
            format!(
                "Amount must be at least {} {currency}",
                format_amount(MIN_AMOUNT, currency)
            ),
        )
        .with("code", "amount_too_small"));
    }
    if amount > MAX_AMOUNT {
        return Err(ApiError::invalid_param(
            param,
            format!(
                "Amount must be no more than {} {currency}",
                format_amount(MAX_AMOUNT, currency)
            ),
        )
        .with("code", "amount_too_large"));
    }
    Ok(())
}

fn metadata_param(params: &mut Params, path: &[&str]) -> Result<Metadata, ApiError> {
    match params.metadata(path)? {
        Some(m) => m.into_new(&display_path(path)),
        None => Ok(Metadata::new()),
    }
}

/// `off_session` accepts a boolean or Stripe's older `one_off` / `recurring`.
fn off_session_param(params: &mut Params) -> Result<Option<bool>, ApiError> {
    match params.str(&["off_session"])?.as_deref() {
        None => Ok(None),
        Some("true" | "one_off" | "recurring") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(ApiError::invalid_param(
            "off_session",
            format!("Invalid boolean: {other}"),
        )),
    }
}

/// Empty strings unset optional fields in Stripe's API.
fn non_empty(s: Option<String>) -> Option<Option<String>> {
    s.map(|v| if v.is_empty() { None } else { Some(v) })
}

fn paginate<T>(
    items: Vec<(u64, String, T)>,
    limit: usize,
    starting_after: Option<&str>,
    ending_before: Option<&str>,
    kind: &str,
) -> Result<(Vec<T>, bool), ApiError> {
    // Items arrive newest first.
    let position = |cursor: &str, param: &str| {
        items
            .iter()
            .position(|(_, id, _)| id == cursor)
            .ok_or_else(|| ApiError::no_such(kind, cursor, Some(param)))
    };
    let (start, end) = match (starting_after, ending_before) {
        (Some(after), _) => {
            let i = position(after, "starting_after")? + 1;
            (i, (i + limit).min(items.len()))
        }
        (None, Some(before)) => {
            let i = position(before, "ending_before")?;
            (i.saturating_sub(limit), i)
        }
        (None, None) => (0, limit.min(items.len())),
    };
    let has_more = match (starting_after, ending_before) {
        (None, Some(_)) => start > 0,
        _ => end < items.len(),
    };
    let page = items
        .into_iter()
        .skip(start)
        .take(end - start)
        .map(|(_, _, t)| t)
        .collect();
    Ok((page, has_more))
}

/// `created=<ts>` or `created[gt|gte|lt|lte]=<ts>` as an inclusive (from, to) range.
fn created_range(params: &mut Params) -> Result<(Option<i64>, Option<i64>), ApiError> {
    if !params.is_hash(&["created"]) {
        let exact = params.int(&["created"])?;
        return Ok((exact, exact));
    }
    let gt = params.int(&["created", "gt"])?.map(|t| t.saturating_add(1));
    let gte = params.int(&["created", "gte"])?;
    let lt = params.int(&["created", "lt"])?.map(|t| t.saturating_sub(1));
    let lte = params.int(&["created", "lte"])?;
    Ok((
        gt.max(gte),
        match (lt, lte) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    ))
}

fn list_json(url: &str, data: Vec<Value>, has_more: bool) -> Value {
    json!({ "object": "list", "data": data, "has_more": has_more, "url": url })
}

impl State {
    pub(crate) fn new(public_base: String, webhook_url: Option<String>, max_events: usize) -> Self {
        State {
            public_base,
            webhook_url,
            max_events,
            ..State::default()
        }
    }

    /// Forgets every object, event and fault; keeps configuration.
    pub(crate) fn reset(&mut self) {
        *self = State::new(
            std::mem::take(&mut self.public_base),
            self.webhook_url.take(),
            self.max_events,
        );
    }

    /// Sets the webhook endpoint; events that were waiting for one are queued for it.
    pub(crate) fn set_webhook_url(&mut self, url: Option<String>) {
        self.webhook_url = url;
        if self.webhook_url.is_none() {
            return;
        }
        let queued: std::collections::HashSet<&String> = self.delivery_queue.iter().collect();
        let waiting: Vec<String> = self
            .event_order
            .iter()
            .filter(|id| !queued.contains(id))
            .filter(|id| {
                self.events
                    .get(*id)
                    .is_some_and(|e| e.delivery == DeliveryStatus::Pending)
            })
            .cloned()
            .collect();
        self.delivery_queue.extend(waiting);
        self.wake = true;
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    // ----- events -------------------------------------------------------------------------

    /// Records an event and queues it for webhook delivery.
    pub(crate) fn emit(&mut self, type_: &str, object: Value, previous: Option<Value>, origin: &Origin) {
        let id = new_id("evt", 24);
        let seq = self.next_seq();
        let created = now();
        let mut data = json!({ "object": object });
        if let Some(prev) = previous {
            data["previous_attributes"] = prev;
        }
        let body = json!({
            "id": id,
            "object": "event",
            "api_version": API_VERSION,
            "created": created,
            "data": data,
            "livemode": false,
            "pending_webhooks": u8::from(self.webhook_url.is_some()),
            "request": { "id": origin.request_id, "idempotency_key": origin.idempotency_key },
            "type": type_,
        });
        let body: Arc<str> = Arc::from(body.to_string());
        self.events.insert(
            id.clone(),
            Event {
                id: id.clone(),
                type_: type_.to_string(),
                seq,
                created,
                body,
                delivery: DeliveryStatus::Pending,
                attempts: 0,
            },
        );
        self.event_order.push_back(id.clone());
        while self.event_order.len() > self.max_events.max(1) {
            if let Some(old) = self.event_order.pop_front() {
                self.events.remove(&old);
            }
        }
        self.delivery_queue.push_back(id);
        self.wake = true;
    }

    pub(crate) fn retrieve_event(&self, id: &str, params: Params) -> Result<Value, ApiError> {
        let mut params = params;
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        let ev = self
            .events
            .get(id)
            .ok_or_else(|| ApiError::no_such("event", id, None))?;
        let mut v: Value = serde_json::from_str(&ev.body).map_err(|e| ApiError::api(e.to_string()))?;
        self.expand(&mut v, &expand)?;
        Ok(v)
    }

    pub(crate) fn list_events(&self, mut params: Params) -> Result<Value, ApiError> {
        let limit = crate::wire::list_limit(&mut params)?;
        let starting_after = params.str(&["starting_after"])?;
        let ending_before = params.str(&["ending_before"])?;
        let mut types = params.str_list(&["types"])?;
        if let Some(t) = params.str(&["type"])? {
            types.push(t);
        }
        let delivery_success = params.bool(&["delivery_success"])?;
        let created = created_range(&mut params)?;
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        let matches = |e: &Event| {
            let type_ok = types.is_empty()
                || types.iter().any(|want| match want.strip_suffix('*') {
                    Some(prefix) => e.type_.starts_with(prefix),
                    None => e.type_ == *want,
                });
            let delivered = e.delivery == DeliveryStatus::Delivered;
            type_ok
                && delivery_success.is_none_or(|d| d == delivered)
                && created.0.is_none_or(|lo| e.created >= lo)
                && created.1.is_none_or(|hi| e.created <= hi)
        };
        let items: Vec<(u64, String, &Event)> = self
            .event_order
            .iter()
            .rev()
            .filter_map(|id| self.events.get(id))
            .filter(|e| matches(e))
            .map(|e| (e.seq, e.id.clone(), e))
            .collect();
        let (page, has_more) = paginate(
            items,
            limit,
            starting_after.as_deref(),
            ending_before.as_deref(),
            "event",
        )?;
        let mut data = Vec::with_capacity(page.len());
        for e in page {
            data.push(serde_json::from_str(&e.body).map_err(|e| ApiError::api(e.to_string()))?);
        }
        let mut v = list_json("/v1/events", data, has_more);
        self.expand(&mut v, &expand)?;
        Ok(v)
    }

    // ----- expansion ----------------------------------------------------------------------

    /// Renders any object by id, for `expand[]`.
    fn render_id(&self, id: &str) -> Option<Value> {
        let prefix = id.split('_').next().unwrap_or("");
        match prefix {
            "cus" => self.customers.get(id).map(Customer::to_json),
            "pm" => self.payment_methods.get(id).map(PaymentMethod::to_json),
            "seti" => self.setup_intents.get(id).map(SetupIntent::to_json),
            "pi" => self.payment_intents.get(id).map(PaymentIntent::to_json),
            "ch" => self.charges.get(id).map(Charge::to_json),
            "re" => self.refunds.get(id).map(Refund::to_json),
            "dp" => self.disputes.get(id).map(Dispute::to_json),
            "cs" => self.sessions.get(id).map(|session| self.session_json(session)),
            _ => None,
        }
    }

    /// Applies `expand[]` paths such as `setup_intent.payment_method` or `data.customer`.
    pub(crate) fn expand(&self, value: &mut Value, paths: &[String]) -> Result<(), ApiError> {
        for path in paths {
            let segs: Vec<&str> = path.split('.').collect();
            if segs.len() > 4 {
                return Err(ApiError::invalid_param(
                    "expand",
                    "You cannot expand more than 4 levels of a property.",
                ));
            }
            self.expand_path(value, &segs, path)?;
        }
        Ok(())
    }

    fn expand_path(&self, value: &mut Value, segs: &[&str], full: &str) -> Result<(), ApiError> {
        let Some((first, rest)) = segs.split_first() else {
            return Ok(());
        };
        let cannot =
            || ApiError::invalid_param("expand", format!("This property cannot be expanded ({full})."));
        let Some(obj) = value.as_object_mut() else {
            return Err(cannot());
        };
        let Some(field) = obj.get_mut(*first) else {
            return Err(cannot());
        };
        if let Value::Array(items) = field {
            for item in items.iter_mut() {
                self.expand_path(item, rest, full)?;
            }
            return Ok(());
        }
        if let Value::String(id) = field {
            let rendered = self.render_id(id).ok_or_else(cannot)?;
            *field = rendered;
        }
        match field {
            Value::Null => Ok(()),
            Value::Object(_) => self.expand_path(field, rest, full),
            _ => Err(cannot()),
        }
    }

    fn respond(&self, mut v: Value, expand: &[String]) -> Result<Value, ApiError> {
        self.expand(&mut v, expand)?;
        Ok(v)
    }

    // ----- debugging ------------------------------------------------------------------------

    /// Everything, as JSON, for `GET /__sandbox/state`.
    pub(crate) fn dump(&self) -> Value {
        fn sorted<T>(map: &HashMap<String, T>, f: impl Fn(&T) -> Value) -> Value {
            let mut ids: Vec<&String> = map.keys().collect();
            ids.sort();
            Value::Array(ids.into_iter().filter_map(|id| map.get(id)).map(f).collect())
        }
        let events: Vec<Value> = self
            .event_order
            .iter()
            .filter_map(|id| self.events.get(id))
            .map(|e| json!({ "id": e.id, "type": e.type_, "delivery": e.delivery, "attempts": e.attempts }))
            .collect();
        json!({
            "webhook_url": self.webhook_url,
            "customers": sorted(&self.customers, Customer::to_json),
            "payment_methods": sorted(&self.payment_methods, PaymentMethod::to_json),
            "setup_intents": sorted(&self.setup_intents, SetupIntent::to_json),
            "payment_intents": sorted(&self.payment_intents, PaymentIntent::to_json),
            "charges": sorted(&self.charges, Charge::to_json),
            "refunds": sorted(&self.refunds, Refund::to_json),
            "disputes": sorted(&self.disputes, Dispute::to_json),
            "checkout_sessions": sorted(&self.sessions, |session| self.session_json(session)),
            "events": events,
            "webhook_queue": self.delivery_queue,
            "webhook_held": self.held,
            "webhook_faults": self.webhook_faults,
            "api_faults": self.api_faults,
            "idempotency_keys": self.idempotency.len(),
        })
    }

    // ----- idempotency ----------------------------------------------------------------------

    /// The stored state of an idempotency key.
    pub(crate) fn idempotent_entry(&self, key: &str) -> Option<&IdemEntry> {
        self.idempotency.get(key).map(|(_, e)| e)
    }

    /// Frees a key whose request will not be saved (validation error, injected failure).
    pub(crate) fn forget_key(&mut self, key: &str) {
        self.idempotency.remove(key);
    }

    /// Remembers a key, evicting expired keys and, past the cap, the oldest ones.
    pub(crate) fn remember_key(&mut self, key: String, entry: IdemEntry) {
        let cutoff = now() - IDEMPOTENCY_TTL_SECS;
        while let Some((serial, old)) = self.idempotency_order.front().cloned() {
            // The order queue may name keys forgotten (or re-created) since; the serial tells.
            let current = self.idempotency.get(&old).filter(|(s, _)| *s == serial);
            let fresh = current.is_some_and(|(_, e)| e.created() >= cutoff);
            if fresh && self.idempotency_order.len() < MAX_IDEMPOTENCY_KEYS {
                break;
            }
            if current.is_some() {
                self.idempotency.remove(&old);
            }
            self.idempotency_order.pop_front();
        }
        if let Some(slot) = self.idempotency.get_mut(&key) {
            slot.1 = entry;
        } else {
            let serial = self.next_seq();
            self.idempotency.insert(key.clone(), (serial, entry));
            self.idempotency_order.push_back((serial, key));
        }
    }

    /// Records one webhook delivery attempt for inspection.
    pub(crate) fn record_delivery(&mut self, record: DeliveryRecord) {
        self.deliveries.push_back(record);
        while self.deliveries.len() > MAX_DELIVERY_RECORDS {
            self.deliveries.pop_front();
        }
    }
}

/// What the sandbox keeps of a card number.
fn card_from_number(number: &str, exp_month: u32, exp_year: u32) -> Card {
    Card {
        brand: crate::cards::brand(number),
        last4: number[number.len().saturating_sub(4)..].to_string(),
        exp_month,
        exp_year,
        fingerprint: crate::cards::fingerprint(number),
        behavior: Behavior::of(number),
        authenticated_for_off_session: false,
    }
}

fn current_year() -> u32 {
    crate::hosted::current_year_month().0
}

fn unexpected_state(payment_intent: &PaymentIntent, action: &str) -> ApiError {
    ApiError::invalid(format!(
        "You cannot {action} this PaymentIntent because it has a status of {}.",
        payment_intent.status.as_str()
    ))
    .with("code", "payment_intent_unexpected_state")
    .with("payment_intent", payment_intent.to_json())
}

/// The top-level fields that changed, with their old values (`data.previous_attributes`).
fn previous_attributes(before: &Value, after: &Value) -> Option<Value> {
    let (Value::Object(b), Value::Object(a)) = (before, after) else {
        return None;
    };
    let changed: serde_json::Map<String, Value> = b
        .iter()
        .filter(|(k, v)| a.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if changed.is_empty() {
        None
    } else {
        Some(Value::Object(changed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(s: &str) -> Params {
        Params::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn due_sessions_expire_with_an_event() {
        let mut state = State::new("http://sandbox.test".into(), None, 100);
        let v = state.create_session(params("mode=setup&currency=usd")).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        assert_eq!(v["url"], format!("http://sandbox.test/checkout/{id}"));
        state.expire_due_sessions();
        assert_eq!(state.sessions[&id].status, SessionStatus::Open);
        state.sessions.get_mut(&id).unwrap().expires_at = now() - 1;
        state.expire_due_sessions();
        assert_eq!(state.sessions[&id].status, SessionStatus::Expired);
        assert!(
            state
                .events
                .values()
                .any(|e| e.type_ == "checkout.session.expired")
        );
    }

    #[test]
    fn idempotency_keys_are_capped_and_reusable() {
        let mut state = State::default();
        for i in 0..MAX_IDEMPOTENCY_KEYS + 10 {
            state.remember_key(format!("k{i}"), IdemEntry::InProgress { created: now() });
        }
        assert_eq!(state.idempotency.len(), MAX_IDEMPOTENCY_KEYS);
        assert!(state.idempotent_entry("k0").is_none());
        assert!(
            state
                .idempotent_entry(&format!("k{}", MAX_IDEMPOTENCY_KEYS + 9))
                .is_some()
        );
        // A key forgotten and used again keeps its new entry when its old slot is evicted.
        state.forget_key("k20");
        state.remember_key("k20".into(), IdemEntry::InProgress { created: now() });
        for i in 0..30 {
            state.remember_key(format!("more{i}"), IdemEntry::InProgress { created: now() });
        }
        assert!(state.idempotent_entry("k20").is_some());
        assert!(state.idempotency.len() <= MAX_IDEMPOTENCY_KEYS);
    }

    #[test]
    fn payment_intents_are_listed_newest_first_by_customer_and_creation() {
        let mut state = State::new("http://sandbox.test".into(), None, 100);
        let mut customer = || {
            state
                .create_customer(params("email=a%40b.c"), &Origin::default())
                .unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let (ours, theirs) = (customer(), customer());
        let mut ids = Vec::new();
        for (who, amount) in [(&ours, 1000), (&theirs, 1500), (&ours, 2000), (&ours, 3000)] {
            let pi = state
                .create_payment_intent(
                    params(&format!(
                        "amount={amount}&currency=usd&customer={who}&metadata[tollgate_reference]=top_{amount}"
                    )),
                    &Origin::default(),
                )
                .unwrap();
            ids.push(pi["id"].as_str().unwrap().to_string());
        }
        let amounts = |v: &Value| {
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pi| pi["amount"].as_i64().unwrap())
                .collect::<Vec<_>>()
        };
        let first = state
            .list_payment_intents(params(&format!("customer={ours}&limit=2")))
            .unwrap();
        assert_eq!(first["object"], "list");
        assert_eq!(first["url"], "/v1/payment_intents");
        assert_eq!(amounts(&first), [3000, 2000]);
        assert_eq!(first["has_more"], true);
        assert_eq!(first["data"][0]["metadata"]["tollgate_reference"], "top_3000");
        let rest = state
            .list_payment_intents(params(&format!(
                "customer={ours}&limit=2&starting_after={}",
                ids[2]
            )))
            .unwrap();
        assert_eq!(amounts(&rest), [1000]);
        assert_eq!(rest["has_more"], false);
        let all = state.list_payment_intents(params("")).unwrap();
        assert_eq!(amounts(&all), [3000, 2000, 1500, 1000]);
        let since = now() + 60;
        let later = state
            .list_payment_intents(params(&format!("customer={ours}&created[gte]={since}")))
            .unwrap();
        assert_eq!(amounts(&later), Vec::<i64>::new());
        let before = state
            .list_payment_intents(params(&format!("customer={ours}&created[gte]={}", since - 3600)))
            .unwrap();
        assert_eq!(amounts(&before), [3000, 2000, 1000]);
        assert!(state.list_payment_intents(params("customer=cus_nobody")).is_err());
        assert!(state.list_payment_intents(params("colour=blue")).is_err());
    }

    #[test]
    fn stored_events_are_capped() {
        let mut state = State::new("http://sandbox.test".into(), None, 3);
        for _ in 0..5 {
            state
                .create_customer(params("email=a%40b.c"), &Origin::default())
                .unwrap();
        }
        assert_eq!(state.events.len(), 3);
        assert_eq!(state.event_order.len(), 3);
    }
}
