//! FAPI Grant Management: an entity reads or revokes a grant (a consent)
//! it holds, with a `client_credentials` token carrying
//! `grant_management_query` or `grant_management_revoke`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Bearer;
use crate::app::AppState;
use crate::audit::ActorKind;
use crate::consent::ConsentView;
use crate::error::{Error, Result};
use crate::oauth::{scope, Role};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_grant, delete_grant))
}

/// The calling entity's client id, with the scope required.
fn entity_caller(bearer: Bearer, needed: &str) -> Result<String> {
    if bearer.0.role != Role::Entity || bearer.0.consent.is_some() {
        return Err(Error::Forbidden(
            "grant management needs an entity's client_credentials token".into(),
        ));
    }
    Ok(bearer.require(needed)?.client_id)
}

async fn own_consent(
    state: &AppState,
    client_id: &str,
    id: &str,
) -> Result<crate::store::consent::ConsentRow> {
    state
        .store
        .consent(id)
        .await?
        .filter(|c| c.client_id == client_id)
        .ok_or_else(|| Error::NotFound("no such grant".into()))
}

/// Reads a grant: what it covers, its status, budget and expiry.
#[utoipa::path(
    get, path = "/grants/{id}", tag = "oauth",
    params(("id" = String, Path, description = "The grant_id of a token response")),
    responses(
        (status = 200, description = "The grant", body = ConsentView),
        (status = 401, description = "No valid token", body = crate::error::Problem),
        (status = 403, description = "Not an entity token with grant_management_query", body = crate::error::Problem),
        (status = 404, description = "No such grant of this entity", body = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
async fn get_grant(
    State(state): State<AppState>,
    bearer: Bearer,
    Path(id): Path<String>,
) -> Result<Json<ConsentView>> {
    let client_id = entity_caller(bearer, scope::GRANT_MANAGEMENT_QUERY)?;
    let c = own_consent(&state, &client_id, &id).await?;
    Ok(Json(ConsentView::of(&c)?))
}

/// Revokes a grant: every token derived from it fails on its next use.
#[utoipa::path(
    delete, path = "/grants/{id}", tag = "oauth",
    params(("id" = String, Path, description = "The grant_id of a token response")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid token", body = crate::error::Problem),
        (status = 403, description = "Not an entity token with grant_management_revoke", body = crate::error::Problem),
        (status = 404, description = "No such grant of this entity", body = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
async fn delete_grant(
    State(state): State<AppState>,
    bearer: Bearer,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let client_id = entity_caller(bearer, scope::GRANT_MANAGEMENT_REVOKE)?;
    own_consent(&state, &client_id, &id).await?;
    crate::consent::revoke(
        &state,
        &id,
        ActorKind::Entity,
        &client_id,
        "revoked by the entity (grant management)",
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
