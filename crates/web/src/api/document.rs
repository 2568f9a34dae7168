//! Customer documents (receipts, invoices) over HTTP: the format the `Accept` header asks
//! for, and the response that carries the rendered bytes.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tollgate_billing::ReceiptFormat;

/// PDF when `Accept` names `application/pdf`, else HTML; with the content type to send.
pub(crate) fn wanted_format(headers: &HeaderMap) -> (ReceiptFormat, &'static str) {
    let wants_pdf = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/pdf"));
    if wants_pdf {
        (ReceiptFormat::Pdf, "application/pdf")
    } else {
        (ReceiptFormat::Html, "text/html; charset=utf-8")
    }
}

/// A rendered document, never cached by shared caches.
pub(crate) fn document_response(bytes: Vec<u8>, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
        Body::from(bytes),
    )
        .into_response()
}
