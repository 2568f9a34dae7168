//! Checkout sessions and the hosted page's card flow.

use super::*;

impl State {
    pub(super) fn session_json(&self, session: &CheckoutSession) -> Value {
        let email = session
            .customer
            .as_ref()
            .and_then(|c| self.customers.get(c))
            .and_then(|c| c.email.as_deref());
        session.to_json(email)
    }

    pub(crate) fn create_session(&mut self, mut params: Params) -> Result<Value, ApiError> {
        let mode = match params.req_str(&["mode"])?.as_str() {
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
        let mut currency = currency_param(&mut params, &["currency"])?;
        let customer = non_empty(params.str(&["customer"])?).flatten();
        let customer_email = non_empty(params.str(&["customer_email"])?).flatten();
        let customer_creation = params.str(&["customer_creation"])?;
        let success_url = non_empty(params.str(&["success_url"])?).flatten();
        let cancel_url = non_empty(params.str(&["cancel_url"])?).flatten();
        let metadata = metadata_param(&mut params, &["metadata"])?;
        let client_reference_id = non_empty(params.str(&["client_reference_id"])?).flatten();
        let expires_at = params.int(&["expires_at"])?;
        let types = params.str_list(&["payment_method_types"])?;
        // async-stripe can only restrict Checkout through these two filters (it has no setter for
        // the legacy list), so they are accepted too; an empty list means "not given".
        let allowed_types =
            Some(params.str_list(&["allowed_payment_method_types"])?).filter(|t| !t.is_empty());
        let excluded_types =
            Some(params.str_list(&["excluded_payment_method_types"])?).filter(|t| !t.is_empty());
        let _locale = params.str(&["locale"])?;
        let ui_mode = params.str(&["ui_mode"])?;
        let si_metadata = metadata_param(&mut params, &["setup_intent_data", "metadata"])?;
        let _si_description = params.str(&["setup_intent_data", "description"])?;
        let setup_future_usage = params.str(&["payment_intent_data", "setup_future_usage"])?;
        let pi_metadata = metadata_param(&mut params, &["payment_intent_data", "metadata"])?;
        let pi_description = params.str(&["payment_intent_data", "description"])?;
        let mut line_items = Vec::new();
        for i in params.indices(&["line_items"])? {
            line_items.push(line_item(&mut params, &i, &mut currency)?);
        }
        let expand = params.str_list(&["expand"])?;
        params.finish()?;

        if let Some(t) = types.iter().find(|t| t.as_str() != "card") {
            return Err(ApiError::invalid_param(
                "payment_method_types",
                format!("The sandbox supports only card payments, not {t}."),
            ));
        }
        if let Some((i, t)) = allowed_types
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, t)| t.as_str() != "card")
        {
            return Err(ApiError::invalid_param(
                &format!("allowed_payment_method_types[{i}]"),
                format!("The sandbox supports only card payments, not {t}."),
            ));
        }
        // Card is the only method the sandbox offers, so excluding it would leave nothing to pay with.
        if let Some(i) = excluded_types.iter().flatten().position(|t| t == "card") {
            return Err(ApiError::invalid_param(
                &format!("excluded_payment_method_types[{i}]"),
                "The sandbox supports only card payments, so `card` cannot be excluded.",
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
        if let Some(usage) = &setup_future_usage
            && !matches!(usage.as_str(), "off_session" | "on_session")
        {
            return Err(ApiError::invalid_param(
                "payment_intent_data[setup_future_usage]",
                format!("Invalid setup_future_usage: {usage}"),
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
                if setup_future_usage.is_some() {
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
            let setup_intent = SetupIntent::new(new_id("seti", 24), created, customer.clone(), si_metadata);
            let setup_intent_id = setup_intent.id.clone();
            self.setup_intents.insert(setup_intent_id.clone(), setup_intent);
            Some(setup_intent_id)
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
            allowed_payment_method_types: allowed_types,
            excluded_payment_method_types: excluded_types,
            setup_intent,
            payment_intent: None,
            pi_setup_future_usage: setup_future_usage,
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
            .filter(|session| session.status == SessionStatus::Open && t >= session.expires_at)
            .map(|session| session.id.clone())
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
            .is_some_and(|session| session.status == SessionStatus::Open && now() >= session.expires_at);
        if due {
            self.expire(id, &Origin::default());
        }
    }

    fn expire(&mut self, id: &str, origin: &Origin) -> Option<Value> {
        let session = self.sessions.get_mut(id)?;
        session.status = SessionStatus::Expired;
        session.pending = None;
        let payment_intent_id = session.payment_intent.clone();
        if let Some(payment_intent) = payment_intent_id.and_then(|id| self.payment_intents.get_mut(&id))
            && payment_intent.status != IntentStatus::Succeeded
        {
            payment_intent.status = IntentStatus::Canceled;
            payment_intent.canceled_at = Some(now());
            payment_intent.cancellation_reason = Some("abandoned".into());
        }
        let v = self.sessions.get(id).map(|session| self.session_json(session))?;
        self.emit("checkout.session.expired", v.clone(), None, origin);
        Some(v)
    }

    pub(crate) fn retrieve_session(&mut self, id: &str, mut params: Params) -> Result<Value, ApiError> {
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        self.expire_if_due(id);
        let session = self
            .sessions
            .get(id)
            .ok_or_else(|| ApiError::no_such("checkout.session", id, None))?;
        self.respond(self.session_json(session), &expand)
    }

    pub(crate) fn expire_session(
        &mut self,
        id: &str,
        mut params: Params,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        self.expire_if_due(id);
        let session = self
            .sessions
            .get(id)
            .ok_or_else(|| ApiError::no_such("checkout.session", id, None))?;
        if session.status != SessionStatus::Open {
            return Err(ApiError::invalid(format!(
                "Only Checkout Sessions with a status in [\"open\"] can be expired. This Checkout Session has a status of \"{}\".",
                session.status.as_str()
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
        let Some(session) = self.session(session_id) else {
            return Err(ApiError::no_such("checkout.session", session_id, None));
        };
        if session.status != SessionStatus::Open {
            return Ok(PageOutcome::Error(
                "This Checkout Session is no longer active.".into(),
            ));
        }
        let card = card_from_number(&input.number, input.exp_month, input.exp_year);
        if card.behavior.challenges_on_session() {
            if let Some(session) = self.sessions.get_mut(session_id) {
                session.pending = Some(PendingCard {
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
        let Some(session) = self.sessions.get_mut(session_id) else {
            return Err(ApiError::no_such("checkout.session", session_id, None));
        };
        let Some(pending) = session.pending.take() else {
            return Ok(PageOutcome::Error(
                "There is no authentication in progress for this session.".into(),
            ));
        };
        if session.status != SessionStatus::Open {
            return Ok(PageOutcome::Error(
                "This Checkout Session is no longer active.".into(),
            ));
        }
        if success {
            return self.finish_session(session_id, pending.card, pending.billing_name, true);
        }
        let origin = Origin::default();
        let mode = session.mode;
        let setup_intent_id = session.setup_intent.clone();
        match mode {
            Mode::Setup => {
                if let Some(setup_intent) = setup_intent_id.and_then(|id| self.setup_intents.get_mut(&id)) {
                    setup_intent.last_setup_error = Some(json!({
                        "type": "invalid_request_error",
                        "code": "setup_intent_authentication_failure",
                        "message": AUTH_FAILED_MESSAGE,
                    }));
                    setup_intent.status = IntentStatus::RequiresPaymentMethod;
                    let v = setup_intent.to_json();
                    self.emit("setup_intent.setup_failed", v, None, &origin);
                }
            }
            Mode::Payment => {
                let payment_intent_id = self.session_payment_intent(session_id, &origin)?;
                if let Some(payment_intent) = self.payment_intents.get_mut(&payment_intent_id) {
                    payment_intent.last_payment_error = Some(json!({
                        "type": "invalid_request_error",
                        "code": "payment_intent_authentication_failure",
                        "message": AUTH_FAILED_MESSAGE,
                    }));
                    payment_intent.status = IntentStatus::RequiresPaymentMethod;
                    let v = payment_intent.to_json();
                    self.emit("payment_intent.payment_failed", v, None, &origin);
                }
            }
        }
        Ok(PageOutcome::Error(AUTH_FAILED_MESSAGE.into()))
    }

    /// The session's payment intent, created on the first payment attempt like Stripe does.
    fn session_payment_intent(&mut self, session_id: &str, origin: &Origin) -> Result<String, ApiError> {
        let session = self
            .sessions
            .get(session_id)
            .ok_or_else(|| ApiError::no_such("checkout.session", session_id, None))?;
        if let Some(payment_intent) = &session.payment_intent {
            return Ok(payment_intent.clone());
        }
        check_capacity(&self.payment_intents)?;
        let amount = session.amount_total().unwrap_or(0);
        let mut payment_intent = PaymentIntent::new(
            new_id("pi", 24),
            now(),
            amount,
            session.currency.clone().unwrap_or_else(|| "usd".into()),
        );
        payment_intent.customer = session.customer.clone();
        payment_intent.metadata = session.pi_metadata.clone();
        payment_intent.description = session.pi_description.clone();
        payment_intent.setup_future_usage = session.pi_setup_future_usage.clone();
        payment_intent.seq = self.next_seq();
        let id = payment_intent.id.clone();
        let v = payment_intent.to_json();
        self.payment_intents.insert(id.clone(), payment_intent);
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.payment_intent = Some(id.clone());
        }
        self.emit("payment_intent.created", v, None, origin);
        Ok(id)
    }

    fn ensure_session_customer(&mut self, session_id: &str, origin: &Origin) -> Option<String> {
        let session = self.sessions.get(session_id)?;
        if let Some(c) = &session.customer {
            return Some(c.clone());
        }
        let c = Customer {
            id: new_id("cus", 14),
            created: now(),
            email: session.customer_email.clone(),
            name: session.billing_name.clone(),
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
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.customer = Some(id.clone());
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
        let Some(session) = self.sessions.get_mut(session_id) else {
            return Err(ApiError::no_such("checkout.session", session_id, None));
        };
        session.billing_name = billing_name.clone();
        let mode = session.mode;
        let setup_intent_id = session.setup_intent.clone();
        let wants_customer = session.customer_creation.as_deref() == Some("always");
        match mode {
            Mode::Setup => {
                let decline = match card.behavior {
                    Behavior::Declined => Some(Decline::GENERIC),
                    Behavior::InsufficientFunds => Some(Decline::INSUFFICIENT_FUNDS),
                    _ => None,
                };
                if let Some(d) = decline {
                    if let Some(setup_intent) = setup_intent_id
                        .as_ref()
                        .and_then(|id| self.setup_intents.get_mut(id))
                    {
                        setup_intent.last_setup_error = Some(json!({
                            "type": "card_error",
                            "code": d.code,
                            "decline_code": d.decline_code,
                            "message": d.message,
                        }));
                        setup_intent.status = IntentStatus::RequiresPaymentMethod;
                        let v = setup_intent.to_json();
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
                    self.sessions
                        .get(session_id)
                        .and_then(|session| session.customer.clone())
                };
                let payment_method = self.create_payment_method(card, billing_name)?;
                if let Some(c) = &customer {
                    self.attach(&payment_method, c, &origin);
                }
                if let Some(setup_intent) = setup_intent_id
                    .as_ref()
                    .and_then(|id| self.setup_intents.get_mut(id))
                {
                    setup_intent.payment_method = Some(payment_method.clone());
                    setup_intent.customer = customer.clone();
                    setup_intent.status = IntentStatus::Succeeded;
                    setup_intent.last_setup_error = None;
                    let v = setup_intent.to_json();
                    self.emit("setup_intent.succeeded", v, None, &origin);
                }
            }
            Mode::Payment => {
                let payment_intent_id = self.session_payment_intent(session_id, &origin)?;
                if authenticated && card.behavior == Behavior::AuthOnSetup {
                    card.authenticated_for_off_session = true;
                }
                let payment_method = self.create_payment_method(card, billing_name)?;
                if let Some(payment_intent) = self.payment_intents.get_mut(&payment_intent_id) {
                    payment_intent.payment_method = Some(payment_method.clone());
                }
                // The hosted page is on-session and any challenge was just passed.
                let decline = self.charge_decline(&payment_method, false, true);
                if let Some(d) = decline {
                    self.fail_payment(&payment_intent_id, &payment_method, d, &origin);
                    return Ok(PageOutcome::Error(d.message.into()));
                }
                let saves = self
                    .payment_intents
                    .get(&payment_intent_id)
                    .is_some_and(|payment_intent| payment_intent.setup_future_usage.is_some());
                if saves {
                    if let Some(c) = self.ensure_session_customer(session_id, &origin) {
                        if let Some(payment_intent) = self.payment_intents.get_mut(&payment_intent_id) {
                            payment_intent.customer = Some(c.clone());
                        }
                        self.attach(&payment_method, &c, &origin);
                    }
                } else if let Some(c) = self
                    .sessions
                    .get(session_id)
                    .and_then(|session| session.customer.clone())
                    && let Some(payment_intent) = self.payment_intents.get_mut(&payment_intent_id)
                {
                    payment_intent.customer = Some(c);
                }
                self.succeed_payment(&payment_intent_id, &payment_method, authenticated, &origin);
                if let Some(session) = self.sessions.get_mut(session_id) {
                    session.paid = true;
                }
            }
        }
        let Some(session) = self.sessions.get_mut(session_id) else {
            return Err(ApiError::no_such("checkout.session", session_id, None));
        };
        session.status = SessionStatus::Complete;
        let redirect = match &session.success_url {
            Some(u) => u.replace("{CHECKOUT_SESSION_ID}", session_id),
            None => format!("{}/checkout/{session_id}", self.public_base),
        };
        let v = self
            .sessions
            .get(session_id)
            .map(|session| self.session_json(session))
            .unwrap_or(Value::Null);
        self.emit("checkout.session.completed", v, None, &origin);
        Ok(PageOutcome::Redirect(redirect))
    }
}
/// Parses one `line_items[i]`: `price_data` style or the older `amount`/`name` style.
fn line_item(params: &mut Params, i: &str, currency: &mut Option<String>) -> Result<LineItem, ApiError> {
    let base = ["line_items", i];
    let at =
        |rest: &[&'static str]| -> Vec<&str> { base.iter().copied().chain(rest.iter().copied()).collect() };
    let quantity = params.int(&at(&["quantity"]))?.unwrap_or(1);
    if !(1..=999_999).contains(&quantity) {
        return Err(ApiError::invalid_param(
            &display_path(&at(&["quantity"])),
            "Quantity must be between 1 and 999999.",
        ));
    }
    if let Some(price) = params.str(&at(&["price"]))? {
        return Err(ApiError::no_such(
            "price",
            &price,
            Some(&display_path(&at(&["price"]))),
        ));
    }
    let (item_currency, unit_amount, name) = if params.has(&at(&["price_data"])) {
        let cur = currency_param(params, &at(&["price_data", "currency"]))?
            .ok_or_else(|| ApiError::missing_param(&display_path(&at(&["price_data", "currency"]))))?;
        let unit = params
            .int(&at(&["price_data", "unit_amount"]))?
            .ok_or_else(|| ApiError::missing_param(&display_path(&at(&["price_data", "unit_amount"]))))?;
        let name = params.str(&at(&["price_data", "product_data", "name"]))?;
        let _desc = params.str(&at(&["price_data", "product_data", "description"]))?;
        let _md = params.metadata(&at(&["price_data", "product_data", "metadata"]))?;
        let _tax = params.str(&at(&["price_data", "tax_behavior"]))?;
        let name = name.ok_or_else(|| {
            ApiError::missing_param(&display_path(&at(&["price_data", "product_data", "name"])))
        })?;
        (cur, unit, name)
    } else {
        let cur = currency_param(params, &at(&["currency"]))?;
        let unit = params.int(&at(&["amount"]))?;
        let name = params.str(&at(&["name"]))?;
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
