//! The OpenAPI 3 document, generated from the annotated handlers.

use axum::body::Bytes;
use utoipa::openapi::OpenApi as Document3;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};

/// Name of the bearer-key security scheme in the document (repeated literally in `ApiDoc`).
pub const SECURITY_SCHEME: &str = "api_key";

/// The document's fixed parts; paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerKey),
    security(("api_key" = [])),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "accounts", description = "Customer accounts"),
        (name = "usage", description = "Usage charges, single and batched"),
        (name = "holds", description = "Reservations for actions of unknown final cost"),
        (name = "billing", description = "Balance, tiers, prices and the ledger"),
        (name = "operations", description = "Health, metrics, this document, the audit log"),
        (name = "invoices", description = "Invoices of invoice-billed accounts: list, document, payment"),
        (name = "events", description = "Events, operator webhook endpoints and their delivery log"),
    )
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, document: &mut Document3) {
        let components = document.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description =
            Some("The operator's secret key (`tg_sk_…`) or another live API key.".to_owned());
        components.add_security_scheme(SECURITY_SCHEME, SecurityScheme::Http(scheme));
    }
}

/// Sets what the document says about itself.
pub(crate) fn finish(mut document: Document3) -> Document3 {
    document.info.title = "Tollgate".to_owned();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document.info.description = Some(
        "Prepaid usage billing: balances, Spend & Save tiers, exactly-once usage charges. \
         Money is a decimal string in USD; errors are `{\"error\": {\"code\", \"message\", \"param\"?}}`."
            .to_owned(),
    );
    document
}

/// The rendered document, shared by the `/openapi.json` handler.
#[derive(Clone, Debug)]
pub struct Document(Bytes);

impl Document {
    /// Renders the document once.
    pub fn new(document: Document3) -> Document {
        // Serialising a tree of plain structs and maps cannot fail.
        let json = serde_json::to_vec(&document).unwrap_or_default();
        Document(Bytes::from(json))
    }

    /// The JSON bytes.
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }
}
