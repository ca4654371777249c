//! Public catalog: license types, issuing units and their keys. The catalog is
//! public information (it is published by the authorities), and the keys are
//! what lets anyone verify a license without trusting licensegate.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::error::{Problem, Result};
use crate::licenses::catalog::LicenseType;
use crate::licenses::Issuer;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_types))
        .routes(routes!(get_type))
        .routes(routes!(list_issuers))
        .routes(routes!(issuer_jwks))
}

/// The catalog of license types.
#[utoipa::path(get, path = "/catalog/v1/license-types", tag = "catalog",
    responses((status = 200, description = "All license types", body = Vec<LicenseType>)))]
async fn list_types(State(state): State<AppState>) -> Result<Json<Vec<LicenseType>>> {
    Ok(Json(state.library.license_types().await?))
}

/// One license type.
#[utoipa::path(get, path = "/catalog/v1/license-types/{code}", tag = "catalog",
    params(("code" = String, Path, description = "Catalog code")),
    responses((status = 200, description = "The license type", body = LicenseType),
              (status = 404, description = "No such type", body = Problem)))]
async fn get_type(
    State(state): State<AppState>,
    Path(code): Path<String>,
) -> Result<Json<LicenseType>> {
    Ok(Json(state.library.license_type(&code).await?))
}

/// Issuing units.
#[utoipa::path(get, path = "/issuers", tag = "catalog",
    responses((status = 200, description = "All issuing units", body = Vec<Issuer>)))]
async fn list_issuers(State(state): State<AppState>) -> Result<Json<Vec<Issuer>>> {
    Ok(Json(state.library.issuers().await?))
}

/// An issuing unit's public keys (JWKS): verifies the SD-JWTs of its licenses.
#[utoipa::path(get, path = "/issuers/{id}/jwks.json", tag = "catalog",
    params(("id" = String, Path, description = "Unified social credit code")),
    responses((status = 200, description = "JWK set", body = Object),
              (status = 404, description = "No such issuing unit", body = Problem)))]
async fn issuer_jwks(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>> {
    Ok(Json(state.library.issuer_jwks(&id).await?))
}
