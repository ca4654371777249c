//! Issuing-unit API: publish, read, update, suspend, reinstate, cancel and
//! bulk-import licenses. An issuing unit sees only its own licenses.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::IssuerCaller;
use super::ApiJson;
use crate::app::AppState;
use crate::error::{Error, Problem, Result};
use crate::licenses::import::ImportReport;
use crate::licenses::{
    HistoryView, LicensePage, LicenseView, PublishRequest, StatusAction, StatusChange,
    UpdateRequest,
};

/// Routes of this module; the import route accepts bodies up to `max_import_bytes`.
pub fn router(max_import_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(publish, list))
        .routes(routes!(get_license, update))
        .routes(routes!(history))
        .routes(routes!(suspend))
        .routes(routes!(reinstate))
        .routes(routes!(cancel))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(import))
                .layer(DefaultBodyLimit::max(max_import_bytes)),
        )
}

/// Publishes a license (version 001), signed by the issuing unit.
#[utoipa::path(post, path = "/issuer/v1/licenses", tag = "issuer", request_body = PublishRequest,
    responses((status = 201, description = "Published", body = LicenseView),
              (status = 403, description = "Type issued by another unit", body = Problem),
              (status = 409, description = "Identifier or source_ref already used", body = Problem),
              (status = 422, description = "Invalid license", body = Problem)),
    security(("bearer" = ["licenses:write"])))]
async fn publish(
    State(state): State<AppState>,
    IssuerCaller(actor): IssuerCaller,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<(StatusCode, Json<LicenseView>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.library.publish(&actor, req).await?),
    ))
}

/// Listing filters and cursor.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only this type.
    license_type: Option<String>,
    /// Only this stored status: valid, suspended or cancelled.
    status: Option<String>,
    /// Cursor: `next_cursor` of the previous page.
    after: Option<String>,
    /// Page size, 1-1000 (default 100).
    limit: Option<u32>,
}

/// The issuing unit's licenses, a page at a time.
#[utoipa::path(get, path = "/issuer/v1/licenses", tag = "issuer", params(ListQuery),
    responses((status = 200, description = "A page", body = LicensePage),
              (status = 400, description = "Bad filter", body = Problem)),
    security(("bearer" = ["licenses:write"])))]
async fn list(
    State(state): State<AppState>,
    IssuerCaller(actor): IssuerCaller,
    q: std::result::Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LicensePage>> {
    let Query(q) = q?;
    Ok(Json(
        state
            .library
            .list(
                &actor,
                q.license_type.as_deref(),
                q.status.as_deref(),
                q.after.as_deref(),
                q.limit,
            )
            .await?,
    ))
}

/// A license at its current version (any version's identifier works).
#[utoipa::path(get, path = "/issuer/v1/licenses/{identifier}", tag = "issuer",
    params(("identifier" = String, Path, description = "License identifier, any version, or without version")),
    responses((status = 200, description = "The license", body = LicenseView),
              (status = 404, description = "Not this unit's license", body = Problem)),
    security(("bearer" = ["licenses:write"])))]
async fn get_license(
    State(state): State<AppState>,
    IssuerCaller(actor): IssuerCaller,
    Path(identifier): Path<String>,
) -> Result<Json<LicenseView>> {
    Ok(Json(state.library.get(&actor, &identifier).await?))
}

/// Issues a new version with new content; earlier versions stay readable.
#[utoipa::path(put, path = "/issuer/v1/licenses/{identifier}", tag = "issuer", request_body = UpdateRequest,
    params(("identifier" = String, Path, description = "License identifier")),
    responses((status = 200, description = "New version", body = LicenseView),
              (status = 404, description = "Not this unit's license", body = Problem),
              (status = 409, description = "Cancelled, or changed meanwhile", body = Problem),
              (status = 422, description = "Invalid content", body = Problem)),
    security(("bearer" = ["licenses:write"])))]
async fn update(
    State(state): State<AppState>,
    IssuerCaller(actor): IssuerCaller,
    Path(identifier): Path<String>,
    ApiJson(req): ApiJson<UpdateRequest>,
) -> Result<Json<LicenseView>> {
    Ok(Json(state.library.update(&actor, &identifier, req).await?))
}

/// Every version and lifecycle event of a license.
#[utoipa::path(get, path = "/issuer/v1/licenses/{identifier}/history", tag = "issuer",
    params(("identifier" = String, Path, description = "License identifier")),
    responses((status = 200, description = "History", body = HistoryView),
              (status = 404, description = "Not this unit's license", body = Problem)),
    security(("bearer" = ["licenses:write"])))]
async fn history(
    State(state): State<AppState>,
    IssuerCaller(actor): IssuerCaller,
    Path(identifier): Path<String>,
) -> Result<Json<HistoryView>> {
    Ok(Json(state.library.history(&actor, &identifier).await?))
}

async fn status_change(
    state: AppState,
    actor: crate::licenses::IssuerActor,
    identifier: String,
    action: StatusAction,
    change: StatusChange,
) -> Result<Json<LicenseView>> {
    Ok(Json(
        state
            .library
            .change_status(&actor, &identifier, action, change)
            .await?,
    ))
}

/// Suspends a valid license.
#[utoipa::path(post, path = "/issuer/v1/licenses/{identifier}/suspend", tag = "issuer", request_body = StatusChange,
    params(("identifier" = String, Path, description = "License identifier")),
    responses((status = 200, description = "Suspended", body = LicenseView),
              (status = 409, description = "Not valid", body = Problem)),
    security(("bearer" = ["licenses:write"])))]
async fn suspend(
    State(state): State<AppState>,
    IssuerCaller(actor): IssuerCaller,
    Path(identifier): Path<String>,
    ApiJson(change): ApiJson<StatusChange>,
) -> Result<Json<LicenseView>> {
    status_change(state, actor, identifier, StatusAction::Suspend, change).await
}

/// Reinstates a suspended license.
#[utoipa::path(post, path = "/issuer/v1/licenses/{identifier}/reinstate", tag = "issuer", request_body = StatusChange,
    params(("identifier" = String, Path, description = "License identifier")),
    responses((status = 200, description = "Reinstated", body = LicenseView),
              (status = 409, description = "Not suspended", body = Problem)),
    security(("bearer" = ["licenses:write"])))]
async fn reinstate(
    State(state): State<AppState>,
    IssuerCaller(actor): IssuerCaller,
    Path(identifier): Path<String>,
    ApiJson(change): ApiJson<StatusChange>,
) -> Result<Json<LicenseView>> {
    status_change(state, actor, identifier, StatusAction::Reinstate, change).await
}

/// Cancels a license for good.
#[utoipa::path(post, path = "/issuer/v1/licenses/{identifier}/cancel", tag = "issuer", request_body = StatusChange,
    params(("identifier" = String, Path, description = "License identifier")),
    responses((status = 200, description = "Cancelled", body = LicenseView),
              (status = 409, description = "Already cancelled", body = Problem)),
    security(("bearer" = ["licenses:write"])))]
async fn cancel(
    State(state): State<AppState>,
    IssuerCaller(actor): IssuerCaller,
    Path(identifier): Path<String>,
    ApiJson(change): ApiJson<StatusChange>,
) -> Result<Json<LicenseView>> {
    status_change(state, actor, identifier, StatusAction::Cancel, change).await
}

/// Bulk import (存量入库): one publication per line (JSON Lines). Each line is
/// accepted, found unchanged, or refused on its own; re-running a file is a no-op.
#[utoipa::path(post, path = "/issuer/v1/imports", tag = "issuer",
    request_body(content = String, content_type = "application/x-ndjson", description = "One PublishRequest per line"),
    responses((status = 200, description = "Per-line report", body = ImportReport),
              (status = 413, description = "Too large", body = Problem)),
    security(("bearer" = ["licenses:write"])))]
async fn import(
    State(state): State<AppState>,
    IssuerCaller(actor): IssuerCaller,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<ImportReport>> {
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge(r.body_text()),
        _ => Error::BadRequest(r.body_text()),
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Error::BadRequest("the import must be UTF-8 text".into()))?;
    Ok(Json(state.library.import(&actor, text).await))
}
