//! Notifications over HTTP: holders' preferences, operators' webhook
//! endpoints, deliveries (dead letters) and the scheduled jobs.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Operator;
use super::authorize::{api_session, Slot};
use super::ApiJson;
use crate::app::AppState;
use crate::audit::Outcome;
use crate::error::{Error, Problem, Result};
use crate::notify::{
    self, DeliveryRound, DeliveryView, EndpointView, NewEndpoint, Preference, RegisteredEndpoint,
    ReminderRun,
};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_preferences, put_preferences))
        .routes(routes!(register_webhook, list_webhooks))
        .routes(routes!(disable_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
        .routes(routes!(run_reminders))
        .routes(routes!(run_deliveries))
}

/// The holder's notification preferences (session cookie).
#[utoipa::path(get, path = "/holder/v1/notification-preferences", tag = "holder",
    responses((status = 200, description = "Every kind, on or off", body = [Preference]),
              (status = 401, description = "Not logged in", body = Problem)))]
async fn get_preferences(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
) -> Result<Json<Vec<Preference>>> {
    let s = api_session(&state, &headers, &slot, false).await?;
    Ok(Json(notify::preferences(&state, &s.holder_id).await?))
}

/// Sets the holder's notification preferences (session cookie and `x-csrf-token`).
#[utoipa::path(put, path = "/holder/v1/notification-preferences", tag = "holder", request_body = [Preference],
    responses((status = 200, description = "The preferences now", body = [Preference]),
              (status = 403, description = "Missing or wrong CSRF token", body = Problem),
              (status = 422, description = "Unknown kind", body = Problem)))]
async fn put_preferences(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    ApiJson(prefs): ApiJson<Vec<Preference>>,
) -> Result<Json<Vec<Preference>>> {
    let s = api_session(&state, &headers, &slot, true).await?;
    notify::set_preferences(&state, &s.holder_id, &prefs).await?;
    Ok(Json(notify::preferences(&state, &s.holder_id).await?))
}

/// Registers a webhook endpoint; the signing secret is shown once. Audited.
#[utoipa::path(post, path = "/admin/v1/webhooks", tag = "admin", request_body = NewEndpoint,
    responses((status = 201, description = "Registered", body = RegisteredEndpoint),
              (status = 422, description = "Invalid endpoint", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn register_webhook(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiJson(req): ApiJson<NewEndpoint>,
) -> Result<(StatusCode, Json<RegisteredEndpoint>)> {
    let r = notify::register_endpoint(&state, req).await?;
    state
        .audit
        .record(
            op.actor()
                .event("webhook.registered", Outcome::Success)
                .reason(format!(
                    "{} {} {}",
                    r.endpoint.id, r.endpoint.recipients, r.endpoint.url
                )),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// Every webhook endpoint (never their secrets).
#[utoipa::path(get, path = "/admin/v1/webhooks", tag = "admin",
    responses((status = 200, description = "Endpoints", body = [EndpointView])),
    security(("bearer" = ["catalog:write"])))]
async fn list_webhooks(
    State(state): State<AppState>,
    _op: Operator,
) -> Result<Json<Vec<EndpointView>>> {
    Ok(Json(notify::endpoints(&state).await?))
}

/// Stops deliveries to an endpoint (pending ones stay and wait). Audited.
#[utoipa::path(post, path = "/admin/v1/webhooks/{id}/disable", tag = "admin",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 204, description = "Disabled"),
              (status = 404, description = "No such endpoint", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn disable_webhook(
    State(state): State<AppState>,
    Operator(op): Operator,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    if !state.store.set_endpoint_active(&id, false).await? {
        return Err(Error::NotFound("no such webhook endpoint".into()));
    }
    state
        .audit
        .record(
            op.actor()
                .event("webhook.disabled", Outcome::Success)
                .reason(id),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Which deliveries to list.
#[derive(Debug, Deserialize, IntoParams)]
struct DeliveryQuery {
    /// pending, delivered or dead (default: all).
    status: Option<String>,
}

/// Deliveries, newest first; `?status=dead` is the dead-letter queue.
#[utoipa::path(get, path = "/admin/v1/deliveries", tag = "admin", params(DeliveryQuery),
    responses((status = 200, description = "Deliveries", body = [DeliveryView]),
              (status = 400, description = "Bad status", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn list_deliveries(
    State(state): State<AppState>,
    _op: Operator,
    q: std::result::Result<Query<DeliveryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<DeliveryView>>> {
    let Query(q) = q?;
    if let Some(s) = &q.status {
        if !matches!(s.as_str(), "pending" | "delivered" | "dead") {
            return Err(Error::BadRequest(
                "status must be pending, delivered or dead".into(),
            ));
        }
    }
    Ok(Json(
        state
            .store
            .deliveries(q.status.as_deref())
            .await?
            .iter()
            .map(DeliveryView::of)
            .collect(),
    ))
}

/// Puts a dead delivery back in the queue for a fresh series of attempts. Audited.
#[utoipa::path(post, path = "/admin/v1/deliveries/{id}/retry", tag = "admin",
    params(("id" = String, Path, description = "Delivery id")),
    responses((status = 204, description = "Queued again"),
              (status = 409, description = "Not a dead delivery", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn retry_delivery(
    State(state): State<AppState>,
    Operator(op): Operator,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    if !state
        .store
        .retry_delivery(&id, crate::store::now().unix_timestamp())
        .await?
    {
        return Err(Error::Conflict("no dead delivery has this id".into()));
    }
    state
        .audit
        .record(
            op.actor()
                .event("delivery.retried", Outcome::Success)
                .reason(id),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs the daily reminder job now (it also runs by itself once a day);
/// running it again queues nothing twice.
#[utoipa::path(post, path = "/admin/v1/jobs/reminders", tag = "admin",
    responses((status = 200, description = "What was queued", body = ReminderRun)),
    security(("bearer" = ["catalog:write"])))]
async fn run_reminders(State(state): State<AppState>, _op: Operator) -> Result<Json<ReminderRun>> {
    Ok(Json(notify::run_reminders(&state).await?))
}

/// Runs one round of the delivery worker now (it also runs by itself every few seconds).
#[utoipa::path(post, path = "/admin/v1/jobs/deliveries", tag = "admin",
    responses((status = 200, description = "What the round did", body = DeliveryRound)),
    security(("bearer" = ["catalog:write"])))]
async fn run_deliveries(
    State(state): State<AppState>,
    _op: Operator,
) -> Result<Json<DeliveryRound>> {
    Ok(Json(
        notify::deliver_round(&state, &notify::http_client()?).await?,
    ))
}
