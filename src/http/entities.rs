//! Entities: the public application, and the operator API for approval,
//! suspension, credentials, use lists, decisions and policy reloads.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Operator;
use super::ApiJson;
use crate::app::{App, AppState};
use crate::entities::{self, Application, Approval, DecisionRequest, EntityView, Verdict};
use crate::error::{Problem, Result};
use crate::policy::{Decision, Scenario};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(apply))
        .routes(routes!(list))
        .routes(routes!(get_entity))
        .routes(routes!(approve))
        .routes(routes!(reject))
        .routes(routes!(suspend))
        .routes(routes!(reinstate))
        .routes(routes!(rotate))
        .routes(routes!(put_scenario))
        .routes(routes!(approve_scenario))
        .routes(routes!(withdraw_scenario))
        .routes(routes!(decision))
        .routes(routes!(reload))
}

/// An entity applies to use licenses (pending until an operator decides).
#[utoipa::path(post, path = "/entities/v1/applications", tag = "entities", request_body = Application,
    responses((status = 201, description = "Filed", body = EntityView),
              (status = 409, description = "Already applied", body = Problem),
              (status = 422, description = "Invalid application", body = Problem)))]
async fn apply(
    State(state): State<AppState>,
    ApiJson(app): ApiJson<Application>,
) -> Result<(StatusCode, Json<EntityView>)> {
    Ok((
        StatusCode::CREATED,
        Json(entities::apply(&state, app).await?),
    ))
}

/// Listing filter.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// pending, approved, rejected or suspended.
    status: Option<String>,
}

/// Entities (operators).
#[utoipa::path(get, path = "/admin/v1/entities", tag = "entities", params(ListQuery),
    responses((status = 200, description = "Entities", body = Vec<EntityView>)),
    security(("bearer" = ["catalog:write"])))]
async fn list(
    State(state): State<AppState>,
    _op: Operator,
    q: std::result::Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<EntityView>>> {
    let Query(q) = q?;
    Ok(Json(entities::list(&state, q.status.as_deref()).await?))
}

/// One entity with its scenarios (operators).
#[utoipa::path(get, path = "/admin/v1/entities/{id}", tag = "entities",
    params(("id" = String, Path, description = "Entity id")),
    responses((status = 200, description = "The entity", body = EntityView), (status = 404, description = "No such entity", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn get_entity(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<EntityView>> {
    Ok(Json(entities::view(&state, &id).await?))
}

/// Approves a pending entity with its filing number; returns its credentials once.
#[utoipa::path(post, path = "/admin/v1/entities/{id}/approve", tag = "entities", request_body = Verdict,
    params(("id" = String, Path, description = "Entity id")),
    responses((status = 200, description = "Approved", body = Approval), (status = 409, description = "Not pending", body = Problem),
              (status = 422, description = "No filing number", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn approve(
    State(state): State<AppState>,
    Operator(op): Operator,
    Path(id): Path<String>,
    ApiJson(v): ApiJson<Verdict>,
) -> Result<Json<Approval>> {
    Ok(Json(entities::approve(&state, &op.actor(), &id, v).await?))
}

/// Rejects a pending entity with a reason.
#[utoipa::path(post, path = "/admin/v1/entities/{id}/reject", tag = "entities", request_body = Verdict,
    params(("id" = String, Path, description = "Entity id")),
    responses((status = 200, description = "Rejected", body = EntityView), (status = 409, description = "Not pending", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn reject(
    State(state): State<AppState>,
    Operator(op): Operator,
    Path(id): Path<String>,
    ApiJson(v): ApiJson<Verdict>,
) -> Result<Json<EntityView>> {
    Ok(Json(entities::reject(&state, &op.actor(), &id, v).await?))
}

/// Suspends an entity: its next call with any token fails.
#[utoipa::path(post, path = "/admin/v1/entities/{id}/suspend", tag = "entities", request_body = Verdict,
    params(("id" = String, Path, description = "Entity id")),
    responses((status = 200, description = "Suspended", body = EntityView), (status = 409, description = "Not approved", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn suspend(
    State(state): State<AppState>,
    Operator(op): Operator,
    Path(id): Path<String>,
    ApiJson(v): ApiJson<Verdict>,
) -> Result<Json<EntityView>> {
    Ok(Json(entities::suspend(&state, &op.actor(), &id, v).await?))
}

/// Reinstates a suspended entity.
#[utoipa::path(post, path = "/admin/v1/entities/{id}/reinstate", tag = "entities", request_body = Verdict,
    params(("id" = String, Path, description = "Entity id")),
    responses((status = 200, description = "Reinstated", body = EntityView), (status = 409, description = "Not suspended", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn reinstate(
    State(state): State<AppState>,
    Operator(op): Operator,
    Path(id): Path<String>,
    ApiJson(v): ApiJson<Verdict>,
) -> Result<Json<EntityView>> {
    Ok(Json(
        entities::reinstate(&state, &op.actor(), &id, v).await?,
    ))
}

/// Rotation request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Seconds the previous secret keeps working (default 86400; 0 revokes it at once).
    #[serde(default)]
    pub grace_seconds: Option<i64>,
}

/// New credentials.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rotated {
    /// client_id.
    pub client_id: String,
    /// The new secret, shown once.
    pub client_secret: String,
    /// Seconds the previous secret keeps working.
    pub previous_secret_valid_for: i64,
}

/// Rotates an entity's client secret without downtime.
#[utoipa::path(post, path = "/admin/v1/entities/{id}/credentials/rotate", tag = "entities", request_body = Rotation,
    params(("id" = String, Path, description = "Entity id")),
    responses((status = 200, description = "Rotated", body = Rotated), (status = 409, description = "No secret (private_key_jwt)", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn rotate(
    State(state): State<AppState>,
    Operator(op): Operator,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<Rotation>,
) -> Result<Json<Rotated>> {
    let grace = r.grace_seconds.unwrap_or(86_400).clamp(0, 30 * 86_400);
    let secret = state.clients.rotate_secret(&op.actor(), &id, grace).await?;
    Ok(Json(Rotated {
        client_id: id,
        client_secret: secret,
        previous_secret_valid_for: grace,
    }))
}

/// Creates or changes a scenario of an entity's use list (approved at once).
#[utoipa::path(put, path = "/admin/v1/entities/{id}/scenarios/{purpose}", tag = "entities", request_body = Scenario,
    params(("id" = String, Path, description = "Entity id"), ("purpose" = String, Path, description = "Purpose code")),
    responses((status = 200, description = "The entity", body = EntityView), (status = 422, description = "Invalid scenario", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn put_scenario(
    State(state): State<AppState>,
    Operator(op): Operator,
    Path((id, purpose)): Path<(String, String)>,
    ApiJson(s): ApiJson<Scenario>,
) -> Result<Json<EntityView>> {
    Ok(Json(
        entities::put_scenario(&state, &op.actor(), &id, &purpose, s).await?,
    ))
}

/// Approves a pending scenario.
#[utoipa::path(post, path = "/admin/v1/entities/{id}/scenarios/{purpose}/approve", tag = "entities",
    params(("id" = String, Path, description = "Entity id"), ("purpose" = String, Path, description = "Purpose code")),
    responses((status = 200, description = "The entity", body = EntityView), (status = 409, description = "Not pending", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn approve_scenario(
    State(state): State<AppState>,
    Operator(op): Operator,
    Path((id, purpose)): Path<(String, String)>,
) -> Result<Json<EntityView>> {
    Ok(Json(
        entities::set_scenario(&state, &op.actor(), &id, &purpose, true).await?,
    ))
}

/// Withdraws an approved scenario; effective on the next call.
#[utoipa::path(post, path = "/admin/v1/entities/{id}/scenarios/{purpose}/withdraw", tag = "entities",
    params(("id" = String, Path, description = "Entity id"), ("purpose" = String, Path, description = "Purpose code")),
    responses((status = 200, description = "The entity", body = EntityView), (status = 409, description = "Not approved", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn withdraw_scenario(
    State(state): State<AppState>,
    Operator(op): Operator,
    Path((id, purpose)): Path<(String, String)>,
) -> Result<Json<EntityView>> {
    Ok(Json(
        entities::set_scenario(&state, &op.actor(), &id, &purpose, false).await?,
    ))
}

/// Evaluates a decision as every later call will (operators): Cedar policies
/// AND the approved use list. A refusal is audited with its reasons.
#[utoipa::path(post, path = "/admin/v1/decisions", tag = "entities", request_body = DecisionRequest,
    responses((status = 200, description = "The decision", body = Decision), (status = 422, description = "Invalid question", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn decision(
    State(state): State<AppState>,
    _op: Operator,
    ApiJson(r): ApiJson<DecisionRequest>,
) -> Result<Json<Decision>> {
    Ok(Json(entities::decide_for(&state, &r).await?))
}

/// Policies reloaded.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    /// Number of policies now in force.
    pub policies: usize,
}

/// Reloads the policies from disk (as SIGHUP does); invalid files are refused
/// and the policies in force stay.
#[utoipa::path(post, path = "/admin/v1/policies/reload", tag = "entities",
    responses((status = 200, description = "Reloaded", body = Reloaded), (status = 422, description = "Invalid policies; nothing changed", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn reload(State(state): State<AppState>, Operator(op): Operator) -> Result<Json<Reloaded>> {
    Ok(Json(Reloaded {
        policies: App::reload_policies(&state, &op.actor()).await?,
    }))
}
