//! Payment intents, charges, refunds and disputes.

use super::*;

impl State {
    pub(crate) fn create_payment_intent(
        &mut self,
        mut params: Params,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        let amount = params
            .int(&["amount"])?
            .ok_or_else(|| ApiError::missing_param("amount"))?;
        let currency =
            currency_param(&mut params, &["currency"])?.ok_or_else(|| ApiError::missing_param("currency"))?;
        let customer = non_empty(params.str(&["customer"])?).flatten();
        let payment_method = non_empty(params.str(&["payment_method"])?).flatten();
        let confirm = params.bool(&["confirm"])?.unwrap_or(false);
        let off_session = off_session_param(&mut params)?;
        let metadata = metadata_param(&mut params, &["metadata"])?;
        let description = non_empty(params.str(&["description"])?).flatten();
        let types = params.str_list(&["payment_method_types"])?;
        let setup_future_usage = non_empty(params.str(&["setup_future_usage"])?).flatten();
        let return_url = non_empty(params.str(&["return_url"])?).flatten();
        let capture_method = params.str(&["capture_method"])?;
        let _error_on_requires_action = params.bool(&["error_on_requires_action"])?;
        let _receipt_email = params.str(&["receipt_email"])?;
        let _statement_descriptor_suffix = params.str(&["statement_descriptor_suffix"])?;
        let expand = params.str_list(&["expand"])?;
        params.finish()?;

        check_amount(amount, &currency, "amount")?;
        if let Some(t) = types.iter().find(|t| t.as_str() != "card") {
            return Err(ApiError::invalid_param(
                "payment_method_types",
                format!("The sandbox supports only card payments, not {t}."),
            ));
        }
        if capture_method
            .as_deref()
            .is_some_and(|m| m != "automatic" && m != "automatic_async")
        {
            return Err(ApiError::invalid_param(
                "capture_method",
                "The sandbox supports only automatic capture.",
            ));
        }
        if let Some(s) = &setup_future_usage
            && !matches!(s.as_str(), "off_session" | "on_session")
        {
            return Err(ApiError::invalid_param(
                "setup_future_usage",
                format!("Invalid setup_future_usage: {s}"),
            ));
        }
        if off_session.is_some() && !confirm {
            return Err(ApiError::invalid_param(
                "off_session",
                "You can only pass `off_session` when `confirm` is `true`.",
            ));
        }
        if confirm && payment_method.is_none() {
            return Err(ApiError::invalid_param(
                "payment_method",
                "You cannot confirm this PaymentIntent because it's missing a payment method. To confirm the PaymentIntent with a payment method, pass `payment_method`.",
            )
            .with("code", "payment_intent_unexpected_state"));
        }
        if let Some(c) = &customer
            && !self.customers.contains_key(c)
        {
            return Err(ApiError::no_such("customer", c, Some("customer")));
        }
        let payment_method = match payment_method {
            Some(requested) => Some(
                self.resolve_payment_method(&requested)?
                    .ok_or_else(|| ApiError::no_such("payment_method", &requested, Some("payment_method")))?,
            ),
            None => None,
        };
        if let Some(payment_method) = &payment_method {
            self.check_payment_method_for(payment_method, customer.as_deref())?;
        }
        check_capacity(&self.payment_intents)?;
        check_capacity(&self.charges)?;
        let mut payment_intent = PaymentIntent::new(new_id("pi", 24), now(), amount, currency);
        payment_intent.seq = self.next_seq();
        payment_intent.customer = customer;
        payment_intent.payment_method = payment_method;
        payment_intent.metadata = metadata;
        payment_intent.description = description;
        payment_intent.setup_future_usage = setup_future_usage;
        payment_intent.return_url = return_url;
        if payment_intent.payment_method.is_some() {
            payment_intent.status = IntentStatus::RequiresConfirmation;
        }
        let id = payment_intent.id.clone();
        let v = payment_intent.to_json();
        self.payment_intents.insert(id.clone(), payment_intent);
        self.emit("payment_intent.created", v, None, origin);
        if confirm {
            self.confirm(&id, off_session.unwrap_or(false), origin)?;
        }
        let payment_intent = self
            .payment_intents
            .get(&id)
            .ok_or_else(|| ApiError::api("payment intent vanished"))?;
        self.respond(payment_intent.to_json(), &expand)
    }

    /// `GET /v1/payment_intents`: newest first, optionally one customer's and within a
    /// `created` range, paged like every Stripe list.
    pub(crate) fn list_payment_intents(&self, mut params: Params) -> Result<Value, ApiError> {
        let customer = non_empty(params.str(&["customer"])?).flatten();
        let created = created_range(&mut params)?;
        let limit = crate::wire::list_limit(&mut params)?;
        let starting_after = params.str(&["starting_after"])?;
        let ending_before = params.str(&["ending_before"])?;
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        if let Some(c) = &customer
            && !self.customers.contains_key(c)
        {
            return Err(ApiError::no_such("customer", c, Some("customer")));
        }
        let mut items: Vec<(u64, String, &PaymentIntent)> = self
            .payment_intents
            .values()
            .filter(|pi| customer.is_none() || pi.customer == customer)
            .filter(|pi| created.0.is_none_or(|lo| pi.created >= lo))
            .filter(|pi| created.1.is_none_or(|hi| pi.created <= hi))
            .map(|pi| (pi.seq, pi.id.clone(), pi))
            .collect();
        items.sort_by_key(|item| std::cmp::Reverse(item.0));
        let (page, has_more) = paginate(
            items,
            limit,
            starting_after.as_deref(),
            ending_before.as_deref(),
            "payment_intent",
        )?;
        let data = page.into_iter().map(PaymentIntent::to_json).collect();
        self.respond(list_json("/v1/payment_intents", data, has_more), &expand)
    }

    fn check_payment_method_for(&self, payment_method: &str, customer: Option<&str>) -> Result<(), ApiError> {
        let m = self
            .payment_methods
            .get(payment_method)
            .ok_or_else(|| ApiError::no_such("payment_method", payment_method, Some("payment_method")))?;
        match (m.customer.as_deref(), customer) {
            (Some(owner), Some(c)) if owner != c => Err(ApiError::invalid_param(
                "payment_method",
                format!(
                    "The provided PaymentMethod {payment_method} belongs to a different Customer than {c}."
                ),
            )),
            (Some(_), None) => Err(ApiError::invalid_param(
                "payment_method",
                "The provided PaymentMethod was previously attached to a Customer. To use it, you must also provide that Customer's ID.",
            )),
            _ => Ok(()),
        }
    }

    pub(crate) fn retrieve_payment_intent(&self, id: &str, mut params: Params) -> Result<Value, ApiError> {
        let expand = params.str_list(&["expand"])?;
        let _client_secret = params.str(&["client_secret"])?;
        params.finish()?;
        let payment_intent = self
            .payment_intents
            .get(id)
            .ok_or_else(|| ApiError::no_such("payment_intent", id, None))?;
        self.respond(payment_intent.to_json(), &expand)
    }

    pub(crate) fn confirm_payment_intent(
        &mut self,
        id: &str,
        mut params: Params,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        let payment_method = non_empty(params.str(&["payment_method"])?).flatten();
        let off_session = off_session_param(&mut params)?;
        let return_url = non_empty(params.str(&["return_url"])?).flatten();
        let _error_on_requires_action = params.bool(&["error_on_requires_action"])?;
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        let customer = self
            .payment_intents
            .get(id)
            .ok_or_else(|| ApiError::no_such("payment_intent", id, None))?
            .customer
            .clone();
        let payment_method = match payment_method {
            Some(requested) => Some(
                self.resolve_payment_method(&requested)?
                    .ok_or_else(|| ApiError::no_such("payment_method", &requested, Some("payment_method")))?,
            ),
            None => None,
        };
        if let Some(payment_method) = &payment_method {
            self.check_payment_method_for(payment_method, customer.as_deref())?;
        }
        if let Some(payment_intent) = self.payment_intents.get_mut(id) {
            if payment_method.is_some() {
                payment_intent.payment_method = payment_method;
            }
            if return_url.is_some() {
                payment_intent.return_url = return_url;
            }
        }
        self.confirm(id, off_session.unwrap_or(false), origin)?;
        let payment_intent = self
            .payment_intents
            .get(id)
            .ok_or_else(|| ApiError::no_such("payment_intent", id, None))?;
        self.respond(payment_intent.to_json(), &expand)
    }

    pub(crate) fn cancel_payment_intent(
        &mut self,
        id: &str,
        mut params: Params,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        let reason = params.str(&["cancellation_reason"])?;
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        let payment_intent = self
            .payment_intents
            .get_mut(id)
            .ok_or_else(|| ApiError::no_such("payment_intent", id, None))?;
        if matches!(
            payment_intent.status,
            IntentStatus::Succeeded | IntentStatus::Canceled
        ) {
            return Err(unexpected_state(payment_intent, "cancel"));
        }
        payment_intent.status = IntentStatus::Canceled;
        payment_intent.canceled_at = Some(now());
        payment_intent.cancellation_reason = reason.or_else(|| Some("requested_by_customer".into()));
        payment_intent.next_action = None;
        let v = payment_intent.to_json();
        self.emit("payment_intent.canceled", v.clone(), None, origin);
        self.respond(v, &expand)
    }

    /// Which decline (if any) a charge on this card meets.
    pub(super) fn charge_decline(
        &self,
        payment_method: &str,
        off_session: bool,
        authenticated: bool,
    ) -> Option<Decline> {
        let card = &self.payment_methods.get(payment_method)?.card;
        match card.behavior {
            Behavior::Succeeds => None,
            Behavior::Declined | Behavior::AttachThenDecline => Some(Decline::GENERIC),
            Behavior::InsufficientFunds => Some(Decline::INSUFFICIENT_FUNDS),
            Behavior::AuthOnSetup if authenticated || (off_session && card.authenticated_for_off_session) => {
                None
            }
            Behavior::AuthAlways if authenticated => None,
            Behavior::AuthOnSetup | Behavior::AuthAlways => Some(Decline::AUTHENTICATION_REQUIRED),
        }
    }

    /// Confirms a payment intent; a decline is returned as Stripe's 402 card error.
    fn confirm(&mut self, id: &str, off_session: bool, origin: &Origin) -> Result<(), ApiError> {
        let payment_intent = self
            .payment_intents
            .get(id)
            .ok_or_else(|| ApiError::no_such("payment_intent", id, None))?;
        if !matches!(
            payment_intent.status,
            IntentStatus::RequiresPaymentMethod
                | IntentStatus::RequiresConfirmation
                | IntentStatus::RequiresAction
        ) {
            return Err(unexpected_state(payment_intent, "confirm"));
        }
        let Some(payment_method) = payment_intent.payment_method.clone() else {
            return Err(ApiError::invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method. To confirm the PaymentIntent with a payment method, pass `payment_method`.",
            )
            .with("code", "payment_intent_unexpected_state")
            .with("payment_intent", payment_intent.to_json()));
        };
        match self.charge_decline(&payment_method, off_session, false) {
            None => {
                self.succeed_payment(id, &payment_method, false, origin);
                Ok(())
            }
            Some(d) if d == Decline::AUTHENTICATION_REQUIRED && !off_session => {
                let url = format!("{}/authenticate/{id}", self.public_base);
                if let Some(payment_intent) = self.payment_intents.get_mut(id) {
                    payment_intent.status = IntentStatus::RequiresAction;
                    payment_intent.next_action = Some(json!({
                        "type": "redirect_to_url",
                        "redirect_to_url": { "return_url": payment_intent.return_url, "url": url },
                    }));
                    let v = payment_intent.to_json();
                    self.emit("payment_intent.requires_action", v, None, origin);
                }
                Ok(())
            }
            Some(d) => Err(self.fail_payment(id, &payment_method, d, origin)),
        }
    }

    fn new_charge(
        &mut self,
        payment_intent_id: &str,
        payment_method_id: &str,
        failure: Option<Decline>,
        three_d_secure: bool,
    ) -> Option<String> {
        let payment_intent = self.payment_intents.get(payment_intent_id)?;
        let payment_method = self.payment_methods.get(payment_method_id)?;
        let ch = Charge {
            id: new_id("ch", 24),
            created: now(),
            amount: payment_intent.amount,
            amount_refunded: 0,
            currency: payment_intent.currency.clone(),
            customer: payment_intent.customer.clone(),
            description: payment_intent.description.clone(),
            metadata: payment_intent.metadata.clone(),
            payment_intent: payment_intent.id.clone(),
            payment_method: payment_method.id.clone(),
            card: payment_method.card.clone(),
            billing_name: payment_method.billing_name.clone(),
            three_d_secure,
            failure,
            disputed: false,
        };
        let id = ch.id.clone();
        self.charges.insert(id.clone(), ch);
        Some(id)
    }

    pub(super) fn succeed_payment(
        &mut self,
        payment_intent_id: &str,
        payment_method_id: &str,
        three_d_secure: bool,
        origin: &Origin,
    ) {
        let Some(ch) = self.new_charge(payment_intent_id, payment_method_id, None, three_d_secure) else {
            return;
        };
        let Some(payment_intent) = self.payment_intents.get_mut(payment_intent_id) else {
            return;
        };
        payment_intent.status = IntentStatus::Succeeded;
        payment_intent.amount_received = payment_intent.amount;
        payment_intent.latest_charge = Some(ch.clone());
        payment_intent.last_payment_error = None;
        payment_intent.next_action = None;
        let attach_to = match (&payment_intent.setup_future_usage, &payment_intent.customer) {
            (Some(_), Some(c)) => Some(c.clone()),
            _ => None,
        };
        let pi_json = payment_intent.to_json();
        if let Some(c) = attach_to {
            let unattached = self
                .payment_methods
                .get(payment_method_id)
                .is_some_and(|m| m.customer.is_none());
            if unattached {
                if let Some(m) = self.payment_methods.get_mut(payment_method_id)
                    && three_d_secure
                    && m.card.behavior == Behavior::AuthOnSetup
                {
                    m.card.authenticated_for_off_session = true;
                }
                self.attach(payment_method_id, &c, origin);
            }
        }
        if let Some(ch) = self.charges.get(&ch) {
            let v = ch.to_json();
            self.emit("charge.succeeded", v, None, origin);
        }
        self.emit("payment_intent.succeeded", pi_json, None, origin);
    }

    /// Records a declined payment and builds the 402 error Stripe returns for it.
    pub(super) fn fail_payment(
        &mut self,
        payment_intent_id: &str,
        payment_method_id: &str,
        d: Decline,
        origin: &Origin,
    ) -> ApiError {
        let ch = self.new_charge(payment_intent_id, payment_method_id, Some(d), false);
        let pm_json = self
            .payment_methods
            .get(payment_method_id)
            .map(PaymentMethod::to_json)
            .unwrap_or(Value::Null);
        let last_error = json!({
            "type": "card_error",
            "code": d.code,
            "decline_code": d.decline_code,
            "message": d.message,
            "charge": ch,
            "doc_url": format!("https://stripe.com/docs/error-codes/{}", d.code.replace('_', "-")),
            "payment_method": pm_json,
        });
        let Some(payment_intent) = self.payment_intents.get_mut(payment_intent_id) else {
            return ApiError::api("payment intent vanished");
        };
        payment_intent.status = IntentStatus::RequiresPaymentMethod;
        payment_intent.latest_charge = ch.clone();
        payment_intent.last_payment_error = Some(last_error);
        payment_intent.next_action = None;
        let pi_json = payment_intent.to_json();
        if let Some(ch) = ch.as_ref().and_then(|c| self.charges.get(c)) {
            let v = ch.to_json();
            self.emit("charge.failed", v, None, origin);
        }
        self.emit("payment_intent.payment_failed", pi_json.clone(), None, origin);
        let mut err = ApiError::card(d.code, d.message)
            .with("decline_code", d.decline_code)
            .with(
                "doc_url",
                format!("https://stripe.com/docs/error-codes/{}", d.code.replace('_', "-")),
            )
            .with("payment_intent", pi_json)
            .with("payment_method", pm_json);
        if let Some(ch) = ch {
            err = err.with("charge", ch);
        }
        err
    }

    /// A payment intent awaiting authentication, for the hosted challenge page.
    pub(crate) fn payment_intent(&self, id: &str) -> Option<PaymentIntent> {
        self.payment_intents.get(id).cloned()
    }

    /// The on-session 3-D Secure challenge of a payment intent was answered.
    pub(crate) fn answer_payment_challenge(&mut self, id: &str, success: bool) -> Result<String, ApiError> {
        let origin = Origin::default();
        let payment_intent = self
            .payment_intents
            .get(id)
            .ok_or_else(|| ApiError::no_such("payment_intent", id, None))?;
        if payment_intent.status != IntentStatus::RequiresAction {
            return Err(unexpected_state(payment_intent, "authenticate"));
        }
        let payment_method = payment_intent.payment_method.clone().unwrap_or_default();
        let status = if success {
            match self.charge_decline(&payment_method, false, true) {
                None => {
                    self.succeed_payment(id, &payment_method, true, &origin);
                    "succeeded"
                }
                Some(d) => {
                    let _ = self.fail_payment(id, &payment_method, d, &origin);
                    "failed"
                }
            }
        } else {
            if let Some(payment_intent) = self.payment_intents.get_mut(id) {
                payment_intent.status = IntentStatus::RequiresPaymentMethod;
                payment_intent.next_action = None;
                payment_intent.last_payment_error = Some(json!({
                    "type": "invalid_request_error",
                    "code": "payment_intent_authentication_failure",
                    "message": AUTH_FAILED_MESSAGE,
                }));
                let v = payment_intent.to_json();
                self.emit("payment_intent.payment_failed", v, None, &origin);
            }
            "failed"
        };
        Ok(status.to_string())
    }

    // ----- charges, refunds, disputes -------------------------------------------------------

    pub(crate) fn retrieve_charge(&self, id: &str, mut params: Params) -> Result<Value, ApiError> {
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        let ch = self
            .charges
            .get(id)
            .ok_or_else(|| ApiError::no_such("charge", id, None))?;
        self.respond(ch.to_json(), &expand)
    }

    pub(crate) fn create_refund(&mut self, mut params: Params, origin: &Origin) -> Result<Value, ApiError> {
        let charge = non_empty(params.str(&["charge"])?).flatten();
        let payment_intent = non_empty(params.str(&["payment_intent"])?).flatten();
        let amount = params.int(&["amount"])?;
        let reason = params.str(&["reason"])?;
        let metadata = metadata_param(&mut params, &["metadata"])?;
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        if let Some(r) = &reason
            && !matches!(r.as_str(), "duplicate" | "fraudulent" | "requested_by_customer")
        {
            return Err(ApiError::invalid_param("reason", format!("Invalid reason: {r}")));
        }
        let charge_id = match (charge, payment_intent) {
            (Some(c), _) => {
                if !self.charges.contains_key(&c) {
                    return Err(ApiError::no_such("charge", &c, Some("charge")));
                }
                c
            }
            (None, Some(payment_intent)) => {
                let intent = self.payment_intents.get(&payment_intent).ok_or_else(|| {
                    ApiError::no_such("payment_intent", &payment_intent, Some("payment_intent"))
                })?;
                match (&intent.latest_charge, intent.status) {
                    (Some(c), IntentStatus::Succeeded) => c.clone(),
                    _ => {
                        return Err(ApiError::invalid_param(
                            "payment_intent",
                            format!(
                                "This PaymentIntent ({payment_intent}) does not have a successful charge to refund."
                            ),
                        ));
                    }
                }
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "One of the following params should be provided for this request: payment_intent or charge.",
                ));
            }
        };
        check_capacity(&self.refunds)?;
        let ch = self
            .charges
            .get(&charge_id)
            .ok_or_else(|| ApiError::no_such("charge", &charge_id, Some("charge")))?;
        if !ch.succeeded() {
            return Err(ApiError::invalid_param(
                "charge",
                format!("Charge {charge_id} has not succeeded and cannot be refunded."),
            ));
        }
        if ch.disputed {
            return Err(ApiError::invalid(format!(
                "Charge {charge_id} has been charged back; cannot issue a refund."
            ))
            .with("code", "charge_disputed"));
        }
        let remaining = ch.amount - ch.amount_refunded;
        if remaining <= 0 {
            return Err(
                ApiError::invalid(format!("Charge {charge_id} has already been refunded."))
                    .with("code", "charge_already_refunded"),
            );
        }
        let amount = amount.unwrap_or(remaining);
        if amount <= 0 {
            return Err(ApiError::invalid_param(
                "amount",
                format!("Invalid positive integer: {amount}"),
            ));
        }
        if amount > remaining {
            return Err(ApiError::invalid_param(
                "amount",
                format!(
                    "Refund amount ({}) is greater than unrefunded amount on charge ({})",
                    format_amount(amount, &ch.currency),
                    format_amount(remaining, &ch.currency)
                ),
            ));
        }
        let refund = Refund {
            id: new_id("re", 24),
            created: now(),
            amount,
            currency: ch.currency.clone(),
            charge: charge_id.clone(),
            payment_intent: ch.payment_intent.clone(),
            reason,
            metadata,
        };
        let before = ch.to_json();
        if let Some(ch) = self.charges.get_mut(&charge_id) {
            ch.amount_refunded += amount;
        }
        let after = self
            .charges
            .get(&charge_id)
            .map(Charge::to_json)
            .unwrap_or(Value::Null);
        let v = refund.to_json();
        self.refunds.insert(refund.id.clone(), refund);
        self.emit("refund.created", v.clone(), None, origin);
        let prev = previous_attributes(&before, &after);
        self.emit("charge.refunded", after, prev, origin);
        self.respond(v, &expand)
    }

    pub(crate) fn retrieve_refund(&self, id: &str, mut params: Params) -> Result<Value, ApiError> {
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        let r = self
            .refunds
            .get(id)
            .ok_or_else(|| ApiError::no_such("refund", id, None))?;
        self.respond(r.to_json(), &expand)
    }

    pub(crate) fn retrieve_dispute(&self, id: &str, mut params: Params) -> Result<Value, ApiError> {
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        let d = self
            .disputes
            .get(id)
            .ok_or_else(|| ApiError::no_such("dispute", id, None))?;
        self.respond(d.to_json(), &expand)
    }

    /// Opens a dispute (chargeback) on a successful charge.
    pub(crate) fn open_dispute(
        &mut self,
        charge_id: &str,
        reason: Option<String>,
        amount: Option<i64>,
    ) -> Result<Value, ApiError> {
        let ch = self
            .charges
            .get(charge_id)
            .ok_or_else(|| ApiError::no_such("charge", charge_id, None))?;
        if !ch.succeeded() {
            return Err(ApiError::invalid(format!(
                "Charge {charge_id} did not succeed; it cannot be disputed."
            )));
        }
        if ch.disputed {
            return Err(ApiError::invalid(format!(
                "Charge {charge_id} is already disputed."
            )));
        }
        let max = ch.amount - ch.amount_refunded;
        let amount = amount.unwrap_or(max);
        if amount <= 0 || amount > max {
            return Err(ApiError::invalid_param(
                "amount",
                format!("A dispute on {charge_id} can be for 1 to {max} cents."),
            ));
        }
        check_capacity(&self.disputes)?;
        let d = Dispute {
            id: new_id("dp", 24),
            created: now(),
            amount,
            currency: ch.currency.clone(),
            charge: charge_id.to_string(),
            payment_intent: ch.payment_intent.clone(),
            brand: ch.card.brand,
            reason: reason.unwrap_or_else(|| "fraudulent".into()),
            status: "needs_response".into(),
        };
        if let Some(ch) = self.charges.get_mut(charge_id) {
            ch.disputed = true;
        }
        let v = d.to_json();
        self.disputes.insert(d.id.clone(), d);
        self.emit("charge.dispute.created", v.clone(), None, &Origin::default());
        // Stripe takes the disputed amount from the merchant as soon as the dispute opens.
        self.emit(
            "charge.dispute.funds_withdrawn",
            v.clone(),
            None,
            &Origin::default(),
        );
        Ok(v)
    }

    /// Closes an open dispute as `won` or `lost`.
    pub(crate) fn close_dispute(&mut self, id: &str, won: bool) -> Result<Value, ApiError> {
        let d = self
            .disputes
            .get_mut(id)
            .ok_or_else(|| ApiError::no_such("dispute", id, None))?;
        if matches!(d.status.as_str(), "won" | "lost") {
            return Err(ApiError::invalid(format!(
                "Dispute {id} is already closed ({}).",
                d.status
            )));
        }
        let before = d.to_json();
        d.status = if won { "won" } else { "lost" }.into();
        let after = d.to_json();
        let prev = previous_attributes(&before, &after);
        self.emit("charge.dispute.closed", after.clone(), prev, &Origin::default());
        // A won dispute gives the withdrawn money back; a lost one keeps it withdrawn.
        if won {
            self.emit(
                "charge.dispute.funds_reinstated",
                after.clone(),
                None,
                &Origin::default(),
            );
        }
        Ok(after)
    }
}
