//! `GET /v1/audit`: who changed what, newest first.

use axum::Json;
use axum::extract::State;

use crate::api::json::{AuditEntry, AuditList};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{PageQuery, Pagination};
use crate::state::AppState;

/// The audit log, newest first.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "operations",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of audit entries", body = AuditList),
        (status = 400, description = "Invalid `limit`", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    )
)]
pub async fn list_audit(
    State(state): State<AppState>,
    Pagination(page): Pagination,
) -> Result<Json<AuditList>, ApiError> {
    let page = state.store().audit_log(page).await?;
    Ok(Json(AuditList {
        data: page.data.iter().map(AuditEntry::render).collect(),
        has_more: page.has_more,
    }))
}
