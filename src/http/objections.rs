//! Objections (异议) over HTTP: holders (session) and entities (consent
//! token) file them, issuing units answer them, regulators list them.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::ConsentToken;
use super::auth::{IssuerCaller, Regulator};
use super::authorize::{api_session, Slot};
use super::ApiJson;
use crate::app::AppState;
use crate::error::{Error, Problem, Result};
use crate::objections::{self, NewObjection, ObjectionView, Objector, Resolution};
use crate::store::objections::ObjectionFilter;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(holder_file, holder_list))
        .routes(routes!(entity_file))
        .routes(routes!(issuer_list))
        .routes(routes!(issuer_resolve))
        .routes(routes!(regulator_list))
}

/// Files an objection to one of the holder's licenses (session cookie and `x-csrf-token`).
#[utoipa::path(post, path = "/holder/v1/objections", tag = "holder", request_body = NewObjection,
    responses((status = 201, description = "Filed; due date set", body = ObjectionView),
              (status = 401, description = "Not logged in", body = Problem),
              (status = 403, description = "Missing or wrong CSRF token", body = Problem),
              (status = 404, description = "Not the holder's license", body = Problem),
              (status = 422, description = "Invalid objection", body = Problem)))]
async fn holder_file(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NewObjection>,
) -> Result<(StatusCode, Json<ObjectionView>)> {
    let s = api_session(&state, &headers, &slot, true).await?;
    let v = objections::file(&state, &Objector::Holder(s.holder_id), &[], req).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// The holder's objections, oldest due first (session cookie).
#[utoipa::path(get, path = "/holder/v1/objections", tag = "holder",
    responses((status = 200, description = "My objections", body = [ObjectionView]),
              (status = 401, description = "Not logged in", body = Problem)))]
async fn holder_list(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
) -> Result<Json<Vec<ObjectionView>>> {
    let s = api_session(&state, &headers, &slot, false).await?;
    Ok(Json(
        objections::list(
            &state,
            &ObjectionFilter {
                holder_id: Some(s.holder_id),
                ..Default::default()
            },
        )
        .await?,
    ))
}

/// An entity objects to a license its consent covers (the token of that consent).
#[utoipa::path(post, path = "/api/v1/objections", tag = "retrieval", request_body = NewObjection,
    responses((status = 201, description = "Filed", body = ObjectionView),
              (status = 401, description = "Token refused", body = Problem),
              (status = 404, description = "The consent does not cover this license", body = Problem),
              (status = 422, description = "Invalid objection", body = Problem)),
    security(("bearer" = [])))]
async fn entity_file(
    State(state): State<AppState>,
    ConsentToken(a): ConsentToken,
    ApiJson(req): ApiJson<NewObjection>,
) -> Result<(StatusCode, Json<ObjectionView>)> {
    let covered: Vec<String> = a.granted.iter().flat_map(|g| g.licenses.clone()).collect();
    let v = objections::file(
        &state,
        &Objector::Entity(a.claims.client_id.clone()),
        &covered,
        req,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Which objections an issuing unit lists.
#[derive(Debug, Deserialize, IntoParams)]
struct IssuerQuery {
    /// open (default), corrected, rejected or all.
    status: Option<String>,
}

fn status_filter(s: Option<&str>) -> Result<Option<String>> {
    match s {
        None | Some("open") => Ok(Some("open".into())),
        Some("all") => Ok(None),
        Some(s @ ("corrected" | "rejected")) => Ok(Some(s.into())),
        Some(other) => Err(Error::BadRequest(format!(
            "status must be open, corrected, rejected or all, not {other:?}"
        ))),
    }
}

/// The issuing unit's queue of objections to its licenses, oldest due first.
#[utoipa::path(get, path = "/issuer/v1/objections", tag = "issuer", params(IssuerQuery),
    responses((status = 200, description = "Objections", body = [ObjectionView]),
              (status = 400, description = "Bad status", body = Problem)),
    security(("bearer" = ["licenses:write"])))]
async fn issuer_list(
    State(state): State<AppState>,
    IssuerCaller(actor): IssuerCaller,
    q: std::result::Result<Query<IssuerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ObjectionView>>> {
    let Query(q) = q?;
    Ok(Json(
        objections::list(
            &state,
            &ObjectionFilter {
                issuer_id: Some(actor.issuer_id),
                status: status_filter(q.status.as_deref())?,
                ..Default::default()
            },
        )
        .await?,
    ))
}

/// Answers an objection: `{"decision": "correct", fields, valid_from, valid_until, reason}`
/// issues a corrected version of the license; `{"decision": "reject", reason}` rejects.
/// The objector is notified either way.
#[utoipa::path(post, path = "/issuer/v1/objections/{id}/resolution", tag = "issuer", request_body = Resolution,
    params(("id" = String, Path, description = "Objection id")),
    responses((status = 200, description = "Answered", body = ObjectionView),
              (status = 404, description = "No such objection to this issuer's licenses", body = Problem),
              (status = 409, description = "Already answered", body = Problem),
              (status = 422, description = "Invalid answer or corrected content", body = Problem)),
    security(("bearer" = ["licenses:write"])))]
async fn issuer_resolve(
    State(state): State<AppState>,
    IssuerCaller(actor): IssuerCaller,
    Path(id): Path<String>,
    ApiJson(answer): ApiJson<Resolution>,
) -> Result<Json<ObjectionView>> {
    Ok(Json(
        objections::resolve(&state, &actor, &id, answer).await?,
    ))
}

/// Which objections a regulator lists.
#[derive(Debug, Deserialize, IntoParams)]
struct RegulatorQuery {
    /// Only open objections past their due date.
    overdue: Option<bool>,
    /// open, corrected, rejected or all (default all).
    status: Option<String>,
}

/// Objections for regulators: all, by status, or overdue.
#[utoipa::path(get, path = "/audit/v1/objections", tag = "audit", params(RegulatorQuery),
    responses((status = 200, description = "Objections", body = [ObjectionView]),
              (status = 400, description = "Bad filter", body = Problem)),
    security(("bearer" = ["audit:read"])))]
async fn regulator_list(
    State(state): State<AppState>,
    _r: Regulator,
    q: std::result::Result<Query<RegulatorQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ObjectionView>>> {
    let Query(q) = q?;
    if q.overdue == Some(true) {
        return Ok(Json(objections::overdue(&state).await?));
    }
    let status = match q.status.as_deref() {
        None => None,
        s => status_filter(s)?,
    };
    Ok(Json(
        objections::list(
            &state,
            &ObjectionFilter {
                status,
                ..Default::default()
            },
        )
        .await?,
    ))
}
