//! Customers, payment methods and setup intents.

use super::*;

impl State {
    pub(crate) fn create_customer(&mut self, mut params: Params, origin: &Origin) -> Result<Value, ApiError> {
        let email = non_empty(params.str(&["email"])?).flatten();
        let name = non_empty(params.str(&["name"])?).flatten();
        let description = non_empty(params.str(&["description"])?).flatten();
        let phone = non_empty(params.str(&["phone"])?).flatten();
        let metadata = metadata_param(&mut params, &["metadata"])?;
        let default_payment_method =
            non_empty(params.str(&["invoice_settings", "default_payment_method"])?).flatten();
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        check_capacity(&self.customers)?;
        if let Some(payment_method) = &default_payment_method {
            // A brand-new customer has no cards yet, so any default is necessarily foreign.
            return Err(ApiError::invalid_param(
                "invoice_settings[default_payment_method]",
                format!(
                    "The customer does not have a payment method with the ID {payment_method}. The payment method must be attached to the customer."
                ),
            ));
        }
        let invoice_prefix: String = new_id("x", 8).trim_start_matches("x_").to_ascii_uppercase();
        let c = Customer {
            id: new_id("cus", 14),
            created: now(),
            email,
            name,
            description,
            phone,
            metadata,
            default_payment_method: None,
            invoice_prefix,
        };
        let v = c.to_json();
        self.customers.insert(c.id.clone(), c);
        self.emit("customer.created", v.clone(), None, origin);
        self.respond(v, &expand)
    }

    pub(crate) fn retrieve_customer(&self, id: &str, mut params: Params) -> Result<Value, ApiError> {
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        let c = self
            .customers
            .get(id)
            .ok_or_else(|| ApiError::no_such("customer", id, None))?;
        self.respond(c.to_json(), &expand)
    }

    pub(crate) fn update_customer(
        &mut self,
        id: &str,
        mut params: Params,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        let email = non_empty(params.str(&["email"])?);
        let name = non_empty(params.str(&["name"])?);
        let description = non_empty(params.str(&["description"])?);
        let phone = non_empty(params.str(&["phone"])?);
        let metadata = params.metadata(&["metadata"])?;
        let default_payment_method = non_empty(params.str(&["invoice_settings", "default_payment_method"])?);
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        let Some(existing) = self.customers.get(id) else {
            return Err(ApiError::no_such("customer", id, None));
        };
        if let Some(Some(payment_method)) = &default_payment_method {
            let attached = self
                .payment_methods
                .get(payment_method)
                .is_some_and(|m| m.customer.as_deref() == Some(id));
            if !attached {
                return Err(ApiError::invalid_param(
                    "invoice_settings[default_payment_method]",
                    format!(
                        "The customer does not have a payment method with the ID {payment_method}. The payment method must be attached to the customer."
                    ),
                ));
            }
        }
        let mut updated = existing.clone();
        if let Some(v) = email {
            updated.email = v;
        }
        if let Some(v) = name {
            updated.name = v;
        }
        if let Some(v) = description {
            updated.description = v;
        }
        if let Some(v) = phone {
            updated.phone = v;
        }
        if let Some(m) = metadata {
            m.apply(&mut updated.metadata, "metadata")?;
        }
        if let Some(v) = default_payment_method {
            updated.default_payment_method = v;
        }
        let before = existing.to_json();
        let after = updated.to_json();
        self.customers.insert(id.to_string(), updated);
        if let Some(prev) = previous_attributes(&before, &after) {
            self.emit("customer.updated", after.clone(), Some(prev), origin);
        }
        self.respond(after, &expand)
    }

    // ----- payment methods ----------------------------------------------------------------

    pub(crate) fn retrieve_payment_method(&self, id: &str, mut params: Params) -> Result<Value, ApiError> {
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        let payment_method = self
            .payment_methods
            .get(id)
            .ok_or_else(|| ApiError::no_such("payment_method", id, None))?;
        self.respond(payment_method.to_json(), &expand)
    }

    /// `GET /v1/payment_methods` and `GET /v1/customers/{id}/payment_methods`.
    pub(crate) fn list_payment_methods(
        &self,
        path_customer: Option<&str>,
        mut params: Params,
    ) -> Result<Value, ApiError> {
        let customer = match path_customer {
            Some(c) => Some(c.to_string()),
            None => params.str(&["customer"])?,
        };
        let type_ = params.str(&["type"])?;
        let limit = crate::wire::list_limit(&mut params)?;
        let starting_after = params.str(&["starting_after"])?;
        let ending_before = params.str(&["ending_before"])?;
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        if let Some(c) = &customer
            && !self.customers.contains_key(c)
        {
            return Err(match path_customer {
                Some(_) => ApiError::no_such("customer", c, None),
                None => ApiError::no_such("customer", c, Some("customer")),
            });
        }
        let url = match path_customer {
            Some(c) => format!("/v1/customers/{c}/payment_methods"),
            None => "/v1/payment_methods".to_string(),
        };
        let only_cards = type_.as_deref().is_none_or(|t| t == "card");
        let mut items: Vec<(u64, String, &PaymentMethod)> = self
            .payment_methods
            .values()
            .filter(|m| only_cards && customer.is_some() && m.customer == customer)
            .map(|m| (m.seq, m.id.clone(), m))
            .collect();
        items.sort_by_key(|item| std::cmp::Reverse(item.0));
        let (page, has_more) = paginate(
            items,
            limit,
            starting_after.as_deref(),
            ending_before.as_deref(),
            "payment_method",
        )?;
        let data = page.into_iter().map(PaymentMethod::to_json).collect();
        self.respond(list_json(&url, data, has_more), &expand)
    }

    pub(crate) fn attach_payment_method(
        &mut self,
        id: &str,
        mut params: Params,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        let customer = params.req_str(&["customer"])?;
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        if !self.customers.contains_key(&customer) {
            return Err(ApiError::no_such("customer", &customer, Some("customer")));
        }
        let id = &self
            .resolve_payment_method(id)?
            .ok_or_else(|| ApiError::no_such("payment_method", id, None))?;
        let payment_method = self
            .payment_methods
            .get(id)
            .ok_or_else(|| ApiError::no_such("payment_method", id, None))?;
        match payment_method.customer.as_deref() {
            Some(c) if c == customer => return self.respond(payment_method.to_json(), &expand),
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "payment_method",
                    "The payment method you provided has already been attached to a customer.",
                ));
            }
            None => {}
        }
        // Stripe validates the card when attaching it; declining test cards fail here.
        let decline = match payment_method.card.behavior {
            Behavior::Declined => Some(Decline::GENERIC),
            Behavior::InsufficientFunds => Some(Decline::INSUFFICIENT_FUNDS),
            _ => None,
        };
        if let Some(d) = decline {
            return Err(ApiError::card(d.code, d.message)
                .with("decline_code", d.decline_code)
                .with("param", ""));
        }
        let v = self.attach(id, &customer, origin);
        self.respond(v, &expand)
    }

    /// Attaches a card to a customer and emits `payment_method.attached`.
    pub(super) fn attach(&mut self, payment_method_id: &str, customer: &str, origin: &Origin) -> Value {
        let Some(payment_method) = self.payment_methods.get_mut(payment_method_id) else {
            return Value::Null;
        };
        payment_method.customer = Some(customer.to_string());
        let v = payment_method.to_json();
        self.emit("payment_method.attached", v.clone(), None, origin);
        v
    }

    pub(crate) fn detach_payment_method(
        &mut self,
        id: &str,
        mut params: Params,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        let expand = params.str_list(&["expand"])?;
        params.finish()?;
        let payment_method = self
            .payment_methods
            .get_mut(id)
            .ok_or_else(|| ApiError::no_such("payment_method", id, None))?;
        let Some(customer) = payment_method.customer.take() else {
            return Err(ApiError::invalid(
                "The payment method you provided is not attached to a customer so detachment is impossible.",
            ));
        };
        let v = payment_method.to_json();
        // Stripe forgets a detached card as the customer's default too.
        if let Some(c) = self.customers.get_mut(&customer)
            && c.default_payment_method.as_deref() == Some(id)
        {
            let before = c.to_json();
            c.default_payment_method = None;
            let after = c.to_json();
            if let Some(prev) = previous_attributes(&before, &after) {
                self.emit("customer.updated", after, Some(prev), origin);
            }
        }
        self.emit(
            "payment_method.detached",
            v.clone(),
            Some(json!({ "customer": customer })),
            origin,
        );
        self.respond(v, &expand)
    }

    /// Resolves a payment method id, turning Stripe's test ids (`pm_card_visa`…) into a new card.
    pub(super) fn resolve_payment_method(&mut self, id: &str) -> Result<Option<String>, ApiError> {
        if self.payment_methods.contains_key(id) {
            return Ok(Some(id.to_string()));
        }
        let Some(number) = crate::cards::test_token_number(id) else {
            return Ok(None);
        };
        let card = card_from_number(number, 12, current_year() + 3);
        self.create_payment_method(card, None).map(Some)
    }

    pub(super) fn create_payment_method(
        &mut self,
        card: Card,
        billing_name: Option<String>,
    ) -> Result<String, ApiError> {
        check_capacity(&self.payment_methods)?;
        let seq = self.next_seq();
        let payment_method = PaymentMethod {
            id: new_id("pm", 24),
            created: now(),
            seq,
            customer: None,
            card,
            billing_name,
            metadata: Metadata::new(),
        };
        let id = payment_method.id.clone();
        self.payment_methods.insert(id.clone(), payment_method);
        Ok(id)
    }

    // ----- setup intents ------------------------------------------------------------------

    pub(crate) fn retrieve_setup_intent(&self, id: &str, mut params: Params) -> Result<Value, ApiError> {
        let expand = params.str_list(&["expand"])?;
        let _client_secret = params.str(&["client_secret"])?;
        params.finish()?;
        let setup_intent = self
            .setup_intents
            .get(id)
            .ok_or_else(|| ApiError::no_such("setup_intent", id, None))?;
        self.respond(setup_intent.to_json(), &expand)
    }
}
