//! The JSON API of `API.md`: `/v1/*` behind the API key, and the operations
//! endpoints. Each module holds the handlers of one resource.

pub mod accounts;
pub mod audit;
pub mod auto_recharge;
pub mod billing;
pub(crate) mod document;
pub mod events;
pub mod holds;
pub mod invoices;
pub mod json;
pub mod ledger;
pub mod ops;
pub mod payments;
pub mod plan;
pub mod usage;

use axum::Router;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth;
use crate::openapi::ApiDoc;
use crate::state::AppState;

/// Routes that need an API key.
fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(accounts::create_account, accounts::list_accounts))
        .routes(routes!(accounts::get_account))
        .routes(routes!(usage::charge_usage))
        .routes(routes!(usage::charge_usage_batch))
        .routes(routes!(holds::place_hold))
        .routes(routes!(holds::get_hold))
        .routes(routes!(holds::capture_hold))
        .routes(routes!(holds::void_hold))
        .routes(routes!(billing::billing_summary))
        .routes(routes!(billing::list_tiers))
        .routes(routes!(ledger::list_transactions))
        .routes(routes!(ledger::create_grant))
        .routes(routes!(audit::list_audit))
        .routes(routes!(payments::setup_payment_method))
        .routes(routes!(payments::delete_payment_method))
        .routes(routes!(payments::create_topup, payments::list_topups))
        .routes(routes!(payments::get_topup))
        .routes(routes!(payments::refund_topup))
        .routes(routes!(payments::topup_receipt))
        .routes(routes!(auto_recharge::put_auto_recharge))
        .routes(routes!(crate::page::portal::create_portal_session))
        .routes(routes!(plan::put_plan, plan::get_plan))
        .routes(routes!(invoices::list_invoices))
        .routes(routes!(invoices::get_invoice))
        .routes(routes!(invoices::invoice_document))
        .routes(routes!(invoices::pay_invoice))
        .routes(routes!(invoices::mark_invoice_paid))
        .routes(routes!(events::list_events))
        .routes(routes!(events::get_event))
        .routes(routes!(
            events::create_webhook_endpoint,
            events::list_webhook_endpoints
        ))
        .routes(routes!(events::delete_webhook_endpoint))
        .routes(routes!(events::list_deliveries))
}

/// Routes open to anyone: health, metrics, the API description.
fn ops_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi_json))
        // The customer's browser and Stripe call these, never with an API key: the return
        // is answered from what Stripe itself reports, the webhook by its signature.
        .routes(routes!(payments::checkout_return))
        .routes(routes!(payments::stripe_webhook))
}

/// Every route (auth applied where needed) and the OpenAPI document describing them.
pub(crate) fn router(state: AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (v1, mut document) = v1_routes().split_for_parts();
    let v1 = v1.route_layer(axum::middleware::from_fn_with_state(state, auth::require_api_key));
    let (ops, ops_document) = ops_routes().split_for_parts();
    document.merge(ops_document);
    (v1.merge(ops), crate::openapi::finish(document))
}

/// The OpenAPI document of the whole API, without building an app.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = v1_routes().into_openapi();
    document.merge(ops_routes().into_openapi());
    crate::openapi::finish(document)
}
