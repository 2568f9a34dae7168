//! Checkout sessions and the hosted page's card flow.

use super::*;

impl State {
    pub(super) fn session_json(&self, s: &CheckoutSession) -> Value {
        let email = s
            .customer
            .as_ref()
            .and_then(|c| self.customers.get(c))
            .and_then(|c| c.email.as_deref());
        s.to_json(email)
    }

    pub(crate) fn create_session(&mut self, mut p: Params) -> Result<Value, ApiError> {
        let mode = match p.req_str(&["mode"])?.as_str() {
            "setup" => Mode::Setup,
            "payment" => Mode::Payment,
            "subscription" => {
                return Err(ApiError::invalid_param(
                    "mode",
                    "The sandbox supports mode=payment and mode=setup only.",
                ));
            }
            other => return Err(ApiError::invalid_param("mode", format!("Invalid mode: {other}"))),
        };
        let mut currency = currency_param(&mut p, &["currency"])?;
        let customer = non_empty(p.str(&["customer"])?).flatten();
        let customer_email = non_empty(p.str(&["customer_email"])?).flatten();
        let customer_creation = p.str(&["customer_creation"])?;
        let success_url = non_empty(p.str(&["success_url"])?).flatten();
        let cancel_url = non_empty(p.str(&["cancel_url"])?).flatten();
        let metadata = metadata_param(&mut p, &["metadata"])?;
        let client_reference_id = non_empty(p.str(&["client_reference_id"])?).flatten();
        let expires_at = p.int(&["expires_at"])?;
        let types = p.str_list(&["payment_method_types"])?;
        let _locale = p.str(&["locale"])?;
        let ui_mode = p.str(&["ui_mode"])?;
        let si_metadata = metadata_param(&mut p, &["setup_intent_data", "metadata"])?;
        let _si_description = p.str(&["setup_intent_data", "description"])?;
        let sfu = p.str(&["payment_intent_data", "setup_future_usage"])?;
        let pi_metadata = metadata_param(&mut p, &["payment_intent_data", "metadata"])?;
        let pi_description = p.str(&["payment_intent_data", "description"])?;
        let mut line_items = Vec::new();
        for i in p.indices(&["line_items"])? {
            line_items.push(line_item(&mut p, &i, &mut currency)?);
        }
        let expand = p.str_list(&["expand"])?;
        p.finish()?;

        if let Some(t) = types.iter().find(|t| t.as_str() != "card") {
            return Err(ApiError::invalid_param(
                "payment_method_types",
                format!("The sandbox supports only card payments, not {t}."),
            ));
        }
        if ui_mode.as_deref().is_some_and(|m| m != "hosted") {
            return Err(ApiError::invalid_param(
                "ui_mode",
                "The sandbox supports only ui_mode=hosted.",
            ));
        }
        if let Some(c) = &customer_creation
            && !matches!(c.as_str(), "always" | "if_required")
        {
            return Err(ApiError::invalid_param(
                "customer_creation",
                format!("Invalid customer_creation: {c}"),
            ));
        }
        if let Some(s) = &sfu
            && !matches!(s.as_str(), "off_session" | "on_session")
        {
            return Err(ApiError::invalid_param(
                "payment_intent_data[setup_future_usage]",
                format!("Invalid setup_future_usage: {s}"),
            ));
        }
        if let Some(c) = &customer
            && !self.customers.contains_key(c)
        {
            return Err(ApiError::no_such("customer", c, Some("customer")));
        }
        let created = now();
        let expires_at = match expires_at {
            None => created + SESSION_TTL_SECS,
            Some(t) if t >= created + 30 * 60 - 60 && t <= created + SESSION_TTL_SECS => t,
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "expires_at",
                    "The `expires_at` timestamp must be between 30 minutes and 24 hours from Checkout Session creation.",
                ));
            }
        };
        match mode {
            Mode::Setup => {
                if !line_items.is_empty() {
                    return Err(ApiError::invalid_param(
                        "line_items",
                        "You cannot pass `line_items` in `setup` mode.",
                    ));
                }
                if sfu.is_some() {
                    return Err(ApiError::invalid_param(
                        "payment_intent_data",
                        "You can not pass `payment_intent_data` in `setup` mode.",
                    ));
                }
            }
            Mode::Payment => {
                if line_items.is_empty() {
                    return Err(ApiError::missing_param("line_items"));
                }
                let cur = currency.clone().unwrap_or_else(|| "usd".into());
                let total: i64 = line_items
                    .iter()
                    .map(|l: &LineItem| l.unit_amount.saturating_mul(l.quantity))
                    .sum();
                check_amount(total, &cur, "line_items")?;
            }
        }
        check_capacity(&self.sessions)?;
        let id = new_id("cs_test", 58);
        let setup_intent = if mode == Mode::Setup {
            check_capacity(&self.setup_intents)?;
            let si = SetupIntent::new(new_id("seti", 24), created, customer.clone(), si_metadata);
            let si_id = si.id.clone();
            self.setup_intents.insert(si_id.clone(), si);
            Some(si_id)
        } else {
            None
        };
        let session = CheckoutSession {
            url: format!("{}/checkout/{id}", self.public_base),
            id: id.clone(),
            created,
            expires_at,
            mode,
            status: SessionStatus::Open,
            paid: false,
            customer,
            customer_email,
            customer_creation,
            currency: if mode == Mode::Payment {
                currency.or_else(|| Some("usd".into()))
            } else {
                currency
            },
            line_items,
            success_url,
            cancel_url,
            metadata,
            client_reference_id,
            setup_intent,
            payment_intent: None,
            pi_setup_future_usage: sfu,
            pi_metadata,
            pi_description,
            pending: None,
            billing_name: None,
        };
        let v = self.session_json(&session);
        self.sessions.insert(id, session);
        self.respond(v, &expand)
    }

    /// Expires every open session whose `expires_at` has passed.
    pub(crate) fn expire_due_sessions(&mut self) {
        let t = now();
        let due: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.status == SessionStatus::Open && t >= s.expires_at)
            .map(|s| s.id.clone())
            .collect();
        for id in due {
            self.expire(&id, &Origin::default());
        }
    }

    /// Expires a session whose `expires_at` has passed, as Stripe does on its own.
    pub(crate) fn expire_if_due(&mut self, id: &str) {
        let due = self
            .sessions
            .get(id)
            .is_some_and(|s| s.status == SessionStatus::Open && now() >= s.expires_at);
        if due {
            self.expire(id, &Origin::default());
        }
    }

    fn expire(&mut self, id: &str, origin: &Origin) -> Option<Value> {
        let s = self.sessions.get_mut(id)?;
        s.status = SessionStatus::Expired;
        s.pending = None;
        let pi = s.payment_intent.clone();
        if let Some(pi) = pi.and_then(|pi| self.payment_intents.get_mut(&pi))
            && pi.status != IntentStatus::Succeeded
        {
            pi.status = IntentStatus::Canceled;
            pi.canceled_at = Some(now());
            pi.cancellation_reason = Some("abandoned".into());
        }
        let v = self.sessions.get(id).map(|s| self.session_json(s))?;
        self.emit("checkout.session.expired", v.clone(), None, origin);
        Some(v)
    }

    pub(crate) fn retrieve_session(&mut self, id: &str, mut p: Params) -> Result<Value, ApiError> {
        let expand = p.str_list(&["expand"])?;
        p.finish()?;
        self.expire_if_due(id);
        let s = self
            .sessions
            .get(id)
            .ok_or_else(|| ApiError::no_such("checkout.session", id, None))?;
        self.respond(self.session_json(s), &expand)
    }

    pub(crate) fn expire_session(
        &mut self,
        id: &str,
        mut p: Params,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        let expand = p.str_list(&["expand"])?;
        p.finish()?;
        self.expire_if_due(id);
        let s = self
            .sessions
            .get(id)
            .ok_or_else(|| ApiError::no_such("checkout.session", id, None))?;
        if s.status != SessionStatus::Open {
            return Err(ApiError::invalid(format!(
                "Only Checkout Sessions with a status in [\"open\"] can be expired. This Checkout Session has a status of \"{}\".",
                s.status.as_str()
            )));
        }
        let v = self
            .expire(id, origin)
            .ok_or_else(|| ApiError::no_such("checkout.session", id, None))?;
        self.respond(v, &expand)
    }

    /// The session as the hosted page needs it.
    pub(crate) fn session(&mut self, id: &str) -> Option<CheckoutSession> {
        self.expire_if_due(id);
        self.sessions.get(id).cloned()
    }

    /// The hosted page's card form was submitted with a valid-looking card.
    pub(crate) fn submit_card(
        &mut self,
        session_id: &str,
        input: CardInput,
    ) -> Result<PageOutcome, ApiError> {
        let Some(s) = self.session(session_id) else {
            return Err(ApiError::no_such("checkout.session", session_id, None));
        };
        if s.status != SessionStatus::Open {
            return Ok(PageOutcome::Error(
                "This Checkout Session is no longer active.".into(),
            ));
        }
        let card = card_from_number(&input.number, input.exp_month, input.exp_year);
        if card.behavior.challenges_on_session() {
            if let Some(s) = self.sessions.get_mut(session_id) {
                s.pending = Some(PendingCard {
                    card,
                    billing_name: input.billing_name,
                });
            }
            return Ok(PageOutcome::Challenge);
        }
        self.finish_session(session_id, card, input.billing_name, false)
    }

    /// The 3-D Secure challenge of the hosted page was completed or failed.
    pub(crate) fn answer_session_challenge(
        &mut self,
        session_id: &str,
        success: bool,
    ) -> Result<PageOutcome, ApiError> {
        let Some(s) = self.sessions.get_mut(session_id) else {
            return Err(ApiError::no_such("checkout.session", session_id, None));
        };
        let Some(pending) = s.pending.take() else {
            return Ok(PageOutcome::Error(
                "There is no authentication in progress for this session.".into(),
            ));
        };
        if s.status != SessionStatus::Open {
            return Ok(PageOutcome::Error(
                "This Checkout Session is no longer active.".into(),
            ));
        }
        if success {
            return self.finish_session(session_id, pending.card, pending.billing_name, true);
        }
        let origin = Origin::default();
        let mode = s.mode;
        let si = s.setup_intent.clone();
        match mode {
            Mode::Setup => {
                if let Some(si) = si.and_then(|id| self.setup_intents.get_mut(&id)) {
                    si.last_setup_error = Some(json!({
                        "type": "invalid_request_error",
                        "code": "setup_intent_authentication_failure",
                        "message": AUTH_FAILED_MESSAGE,
                    }));
                    si.status = IntentStatus::RequiresPaymentMethod;
                    let v = si.to_json();
                    self.emit("setup_intent.setup_failed", v, None, &origin);
                }
            }
            Mode::Payment => {
                let pi = self.session_payment_intent(session_id, &origin)?;
                if let Some(pi) = self.payment_intents.get_mut(&pi) {
                    pi.last_payment_error = Some(json!({
                        "type": "invalid_request_error",
                        "code": "payment_intent_authentication_failure",
                        "message": AUTH_FAILED_MESSAGE,
                    }));
                    pi.status = IntentStatus::RequiresPaymentMethod;
                    let v = pi.to_json();
                    self.emit("payment_intent.payment_failed", v, None, &origin);
                }
            }
        }
        Ok(PageOutcome::Error(AUTH_FAILED_MESSAGE.into()))
    }

    /// The session's payment intent, created on the first payment attempt like Stripe does.
    fn session_payment_intent(&mut self, session_id: &str, origin: &Origin) -> Result<String, ApiError> {
        let s = self
            .sessions
            .get(session_id)
            .ok_or_else(|| ApiError::no_such("checkout.session", session_id, None))?;
        if let Some(pi) = &s.payment_intent {
            return Ok(pi.clone());
        }
        check_capacity(&self.payment_intents)?;
        let amount = s.amount_total().unwrap_or(0);
        let mut pi = PaymentIntent::new(
            new_id("pi", 24),
            now(),
            amount,
            s.currency.clone().unwrap_or_else(|| "usd".into()),
        );
        pi.customer = s.customer.clone();
        pi.metadata = s.pi_metadata.clone();
        pi.description = s.pi_description.clone();
        pi.setup_future_usage = s.pi_setup_future_usage.clone();
        let id = pi.id.clone();
        let v = pi.to_json();
        self.payment_intents.insert(id.clone(), pi);
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.payment_intent = Some(id.clone());
        }
        self.emit("payment_intent.created", v, None, origin);
        Ok(id)
    }

    fn ensure_session_customer(&mut self, session_id: &str, origin: &Origin) -> Option<String> {
        let s = self.sessions.get(session_id)?;
        if let Some(c) = &s.customer {
            return Some(c.clone());
        }
        let c = Customer {
            id: new_id("cus", 14),
            created: now(),
            email: s.customer_email.clone(),
            name: s.billing_name.clone(),
            description: None,
            phone: None,
            metadata: Metadata::new(),
            default_payment_method: None,
            invoice_prefix: new_id("x", 8).trim_start_matches("x_").to_ascii_uppercase(),
        };
        let id = c.id.clone();
        let v = c.to_json();
        self.customers.insert(id.clone(), c);
        self.emit("customer.created", v, None, origin);
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.customer = Some(id.clone());
        }
        Some(id)
    }

    fn finish_session(
        &mut self,
        session_id: &str,
        mut card: Card,
        billing_name: Option<String>,
        authenticated: bool,
    ) -> Result<PageOutcome, ApiError> {
        let origin = Origin::default();
        let Some(s) = self.sessions.get_mut(session_id) else {
            return Err(ApiError::no_such("checkout.session", session_id, None));
        };
        s.billing_name = billing_name.clone();
        let mode = s.mode;
        let si_id = s.setup_intent.clone();
        let wants_customer = s.customer_creation.as_deref() == Some("always");
        match mode {
            Mode::Setup => {
                let decline = match card.behavior {
                    Behavior::Declined => Some(Decline::GENERIC),
                    Behavior::InsufficientFunds => Some(Decline::INSUFFICIENT_FUNDS),
                    _ => None,
                };
                if let Some(d) = decline {
                    if let Some(si) = si_id.as_ref().and_then(|id| self.setup_intents.get_mut(id)) {
                        si.last_setup_error = Some(json!({
                            "type": "card_error",
                            "code": d.code,
                            "decline_code": d.decline_code,
                            "message": d.message,
                        }));
                        si.status = IntentStatus::RequiresPaymentMethod;
                        let v = si.to_json();
                        self.emit("setup_intent.setup_failed", v, None, &origin);
                    }
                    return Ok(PageOutcome::Error(d.message.into()));
                }
                if authenticated && card.behavior == Behavior::AuthOnSetup {
                    card.authenticated_for_off_session = true;
                }
                let customer = if wants_customer {
                    self.ensure_session_customer(session_id, &origin)
                } else {
                    self.sessions.get(session_id).and_then(|s| s.customer.clone())
                };
                let pm = self.create_payment_method(card, billing_name)?;
                if let Some(c) = &customer {
                    self.attach(&pm, c, &origin);
                }
                if let Some(si) = si_id.as_ref().and_then(|id| self.setup_intents.get_mut(id)) {
                    si.payment_method = Some(pm.clone());
                    si.customer = customer.clone();
                    si.status = IntentStatus::Succeeded;
                    si.last_setup_error = None;
                    let v = si.to_json();
                    self.emit("setup_intent.succeeded", v, None, &origin);
                }
            }
            Mode::Payment => {
                let pi_id = self.session_payment_intent(session_id, &origin)?;
                if authenticated && card.behavior == Behavior::AuthOnSetup {
                    card.authenticated_for_off_session = true;
                }
                let pm = self.create_payment_method(card, billing_name)?;
                if let Some(pi) = self.payment_intents.get_mut(&pi_id) {
                    pi.payment_method = Some(pm.clone());
                }
                // The hosted page is on-session and any challenge was just passed.
                let decline = self.charge_decline(&pm, false, true);
                if let Some(d) = decline {
                    self.fail_payment(&pi_id, &pm, d, &origin);
                    return Ok(PageOutcome::Error(d.message.into()));
                }
                let saves = self
                    .payment_intents
                    .get(&pi_id)
                    .is_some_and(|pi| pi.setup_future_usage.is_some());
                if saves {
                    if let Some(c) = self.ensure_session_customer(session_id, &origin) {
                        if let Some(pi) = self.payment_intents.get_mut(&pi_id) {
                            pi.customer = Some(c.clone());
                        }
                        self.attach(&pm, &c, &origin);
                    }
                } else if let Some(c) = self.sessions.get(session_id).and_then(|s| s.customer.clone())
                    && let Some(pi) = self.payment_intents.get_mut(&pi_id)
                {
                    pi.customer = Some(c);
                }
                self.succeed_payment(&pi_id, &pm, authenticated, &origin);
                if let Some(s) = self.sessions.get_mut(session_id) {
                    s.paid = true;
                }
            }
        }
        let Some(s) = self.sessions.get_mut(session_id) else {
            return Err(ApiError::no_such("checkout.session", session_id, None));
        };
        s.status = SessionStatus::Complete;
        let redirect = match &s.success_url {
            Some(u) => u.replace("{CHECKOUT_SESSION_ID}", session_id),
            None => format!("{}/checkout/{session_id}", self.public_base),
        };
        let v = self
            .sessions
            .get(session_id)
            .map(|s| self.session_json(s))
            .unwrap_or(Value::Null);
        self.emit("checkout.session.completed", v, None, &origin);
        Ok(PageOutcome::Redirect(redirect))
    }
}
/// Parses one `line_items[i]`: `price_data` style or the older `amount`/`name` style.
fn line_item(p: &mut Params, i: &str, currency: &mut Option<String>) -> Result<LineItem, ApiError> {
    let base = ["line_items", i];
    let at =
        |rest: &[&'static str]| -> Vec<&str> { base.iter().copied().chain(rest.iter().copied()).collect() };
    let quantity = p.int(&at(&["quantity"]))?.unwrap_or(1);
    if !(1..=999_999).contains(&quantity) {
        return Err(ApiError::invalid_param(
            &display_path(&at(&["quantity"])),
            "Quantity must be between 1 and 999999.",
        ));
    }
    if let Some(price) = p.str(&at(&["price"]))? {
        return Err(ApiError::no_such(
            "price",
            &price,
            Some(&display_path(&at(&["price"]))),
        ));
    }
    let (item_currency, unit_amount, name) = if p.has(&at(&["price_data"])) {
        let cur = currency_param(p, &at(&["price_data", "currency"]))?
            .ok_or_else(|| ApiError::missing_param(&display_path(&at(&["price_data", "currency"]))))?;
        let unit = p
            .int(&at(&["price_data", "unit_amount"]))?
            .ok_or_else(|| ApiError::missing_param(&display_path(&at(&["price_data", "unit_amount"]))))?;
        let name = p.str(&at(&["price_data", "product_data", "name"]))?;
        let _desc = p.str(&at(&["price_data", "product_data", "description"]))?;
        let _md = p.metadata(&at(&["price_data", "product_data", "metadata"]))?;
        let _tax = p.str(&at(&["price_data", "tax_behavior"]))?;
        let name = name.ok_or_else(|| {
            ApiError::missing_param(&display_path(&at(&["price_data", "product_data", "name"])))
        })?;
        (cur, unit, name)
    } else {
        let cur = currency_param(p, &at(&["currency"]))?;
        let unit = p.int(&at(&["amount"]))?;
        let name = p.str(&at(&["name"]))?;
        match (cur, unit) {
            (Some(c), Some(u)) => (c, u, name.unwrap_or_else(|| "Item".into())),
            _ => return Err(ApiError::missing_param(&display_path(&at(&["price_data"])))),
        }
    };
    if unit_amount < 0 {
        return Err(ApiError::invalid_param(
            &display_path(&at(&["price_data", "unit_amount"])),
            "Invalid non-negative integer",
        ));
    }
    match currency {
        Some(c) if *c != item_currency => {
            return Err(ApiError::invalid_param(
                "line_items",
                "All line items must use the same currency.",
            ));
        }
        _ => *currency = Some(item_currency),
    }
    Ok(LineItem {
        name,
        unit_amount,
        quantity,
    })
}
