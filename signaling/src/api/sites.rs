//! The site directory: list, add one, import a CSV file.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{Admin, ApiError, ApiState, ErrorBody, Json, SignedIn};
use crate::store::{ImportOutcome, NewSite, Site, SiteKind};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSite {
    pub code: String,
    pub name: String,
    pub kind: SiteKind,
    #[serde(default)]
    pub parent_code: Option<String>,
}

/// Every site.
#[utoipa::path(get, path = "/api/sites", operation_id = "list_sites", tag = "sites", security(("bearer" = [])),
    responses((status = 200, body = Vec<Site>), (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<ApiState>,
    _signed: SignedIn,
) -> Result<axum::Json<Vec<Site>>, ApiError> {
    Ok(axum::Json(state.store.sites().await?))
}

/// Adds a site (administrators only).
#[utoipa::path(post, path = "/api/sites", operation_id = "create_site", tag = "sites", security(("bearer" = [])),
    request_body = CreateSite,
    responses(
        (status = 201, body = Site),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "the code is taken", body = ErrorBody),
    ))]
pub(super) async fn create(
    State(state): State<ApiState>,
    _admin: Admin,
    Json(request): Json<CreateSite>,
) -> Result<(StatusCode, axum::Json<Site>), ApiError> {
    let site = state
        .store
        .create_site(&NewSite {
            code: &request.code,
            name: &request.name,
            kind: request.kind,
            parent_code: request.parent_code.as_deref(),
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(site)))
}

/// Imports sites from CSV (`code,name,kind,parent_code`): all lines or none (administrators
/// only).
#[utoipa::path(post, path = "/api/sites/import", operation_id = "import_sites", tag = "sites", security(("bearer" = [])),
    request_body(content = String, content_type = "text/csv"),
    responses(
        (status = 200, body = ImportOutcome),
        (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "bad lines; nothing was imported", body = ErrorBody),
    ))]
pub(super) async fn import(
    State(state): State<ApiState>,
    _admin: Admin,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<ImportOutcome>, ApiError> {
    let body = body?;
    let outcome = state.store.import_sites(&body).await?;
    tracing::info!(
        created = outcome.created,
        updated = outcome.updated,
        "sites imported"
    );
    Ok(axum::Json(outcome))
}
