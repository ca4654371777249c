//! Operator API: issuing units, the catalog and OAuth clients.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Bearer, Operator};
use super::ApiJson;
use crate::app::AppState;
use crate::error::{Problem, Result};
use crate::licenses::catalog::{LicenseType, LicenseTypeSpec};
use crate::licenses::Issuer;
use crate::oauth::client_auth::{CreatedClient, NewClient};
use crate::oauth::scope;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_issuer))
        .routes(routes!(create_type))
        .routes(routes!(update_type))
        .routes(routes!(create_client))
        .routes(routes!(rotate_key))
        .routes(routes!(set_holder_account))
        .routes(routes!(set_regulator_account))
}

/// A regulator's console account to create or reset.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RegulatorAccountRequest {
    /// Login name (letters, digits, '.', '_', '-').
    username: String,
    /// Shown name.
    display_name: String,
    /// An initial password (at least 10 characters); generated when absent.
    #[serde(default)]
    password: Option<String>,
}

/// The account, with the password shown this once.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct RegulatorAccount {
    /// Login name.
    username: String,
    /// The password to hand over.
    password: String,
}

/// Creates or resets a regulator's console login (argon2id); clears any lock. Audited.
#[utoipa::path(post, path = "/admin/v1/regulator-accounts", tag = "admin", request_body = RegulatorAccountRequest,
    responses((status = 200, description = "Account set", body = RegulatorAccount),
              (status = 422, description = "Invalid name or password", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn set_regulator_account(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiJson(req): ApiJson<RegulatorAccountRequest>,
) -> Result<Json<RegulatorAccount>> {
    let password = match req.password {
        Some(p) => p,
        None => crate::keys::random_token(12)?,
    };
    crate::console::set_account(&state, &req.username, &req.display_name, &password).await?;
    state
        .audit
        .record(
            op.actor()
                .event("regulator.account_set", crate::audit::Outcome::Success)
                .reason(req.username.clone()),
        )
        .await?;
    Ok(Json(RegulatorAccount {
        username: req.username,
        password,
    }))
}

/// A holder account to create or reset.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct HolderAccountRequest {
    /// The holder's ID number or unified social credit code.
    identifier: String,
    /// An initial password (at least 10 characters); generated when absent.
    #[serde(default)]
    password: Option<String>,
}

/// The account, with the password shown this once.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct HolderAccount {
    /// The holder's id.
    holder_id: String,
    /// The password to hand to the holder (through a channel the operator trusts).
    password: String,
}

/// Creates or resets a holder's login (argon2id); clears any lock. Audited.
#[utoipa::path(post, path = "/admin/v1/holder-accounts", tag = "admin", request_body = HolderAccountRequest,
    responses((status = 200, description = "Account set", body = HolderAccount),
              (status = 404, description = "No holder has this identifier", body = Problem),
              (status = 422, description = "Password too short", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn set_holder_account(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiJson(req): ApiJson<HolderAccountRequest>,
) -> Result<Json<HolderAccount>> {
    let password = match req.password {
        Some(p) => p,
        None => crate::keys::random_token(12)?,
    };
    let holder_id = crate::holders::set_password(&state, &req.identifier, &password).await?;
    state
        .audit
        .record(
            op.actor()
                .event("holder.account_set", crate::audit::Outcome::Success)
                .holder(&holder_id),
        )
        .await?;
    Ok(Json(HolderAccount {
        holder_id,
        password,
    }))
}

/// Registers an issuing unit and generates its signing key.
#[utoipa::path(post, path = "/admin/v1/issuers", tag = "admin", request_body = Issuer,
    responses((status = 201, description = "Registered", body = Issuer),
              (status = 409, description = "Already registered", body = Problem),
              (status = 422, description = "Invalid", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn create_issuer(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiJson(issuer): ApiJson<Issuer>,
) -> Result<(StatusCode, Json<Issuer>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.library.create_issuer(&op.actor(), issuer).await?),
    ))
}

/// Adds a license type to the catalog.
#[utoipa::path(post, path = "/admin/v1/license-types", tag = "admin", request_body = LicenseTypeSpec,
    responses((status = 201, description = "Created", body = LicenseType),
              (status = 409, description = "Code already used", body = Problem),
              (status = 422, description = "Invalid definition", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn create_type(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiJson(spec): ApiJson<LicenseTypeSpec>,
) -> Result<(StatusCode, Json<LicenseType>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.library.create_type(&op.actor(), spec).await?),
    ))
}

/// Replaces a license type's definition.
#[utoipa::path(put, path = "/admin/v1/license-types/{code}", tag = "admin", request_body = LicenseTypeSpec,
    params(("code" = String, Path, description = "Catalog code")),
    responses((status = 200, description = "Updated", body = LicenseType),
              (status = 404, description = "No such type", body = Problem),
              (status = 409, description = "Conflicting change", body = Problem),
              (status = 422, description = "Invalid definition", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn update_type(
    State(state): State<AppState>,
    Operator(op): Operator,
    Path(code): Path<String>,
    ApiJson(spec): ApiJson<LicenseTypeSpec>,
) -> Result<Json<LicenseType>> {
    Ok(Json(
        state.library.update_type(&op.actor(), &code, spec).await?,
    ))
}

/// Registers an OAuth client; the secret is shown only in this response.
#[utoipa::path(post, path = "/admin/v1/clients", tag = "admin", request_body = NewClient,
    responses((status = 201, description = "Registered", body = CreatedClient),
              (status = 422, description = "Invalid", body = Problem)),
    security(("bearer" = ["clients:write"])))]
async fn create_client(
    State(state): State<AppState>,
    bearer: Bearer,
    ApiJson(req): ApiJson<NewClient>,
) -> Result<(StatusCode, Json<CreatedClient>)> {
    let claims = bearer.require(scope::CLIENTS_WRITE)?;
    Ok((
        StatusCode::CREATED,
        Json(state.clients.create(&claims.actor(), req).await?),
    ))
}

/// Which key to rotate.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRotation {
    /// `broker`, or the unified social credit code of an issuing unit.
    pub owner: String,
}

/// The new key.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RotatedKey {
    /// Key id now used for signing.
    pub kid: String,
}

/// Rotates a signing key (the broker's or an issuing unit's). The old key stays
/// in the JWKS, so everything it signed still verifies; other nodes switch to
/// the new key within `key_refresh` seconds (60 by default).
#[utoipa::path(post, path = "/admin/v1/keys/rotate", tag = "admin", request_body = KeyRotation,
    responses((status = 200, description = "Rotated", body = RotatedKey),
              (status = 404, description = "No such issuing unit", body = Problem)),
    security(("bearer" = ["catalog:write"])))]
async fn rotate_key(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiJson(req): ApiJson<KeyRotation>,
) -> Result<Json<RotatedKey>> {
    let owner = if req.owner == crate::keys::BROKER {
        crate::keys::BROKER.to_owned()
    } else if state.store.issuer(&req.owner).await?.is_some() {
        crate::keys::issuer_owner(&req.owner)
    } else {
        return Err(crate::error::Error::NotFound(format!(
            "no issuing unit {}",
            req.owner
        )));
    };
    let key = state.keys.rotate(&owner).await?;
    state
        .audit
        .record(
            op.actor()
                .event("key.rotated", crate::audit::Outcome::Success)
                .reason(format!("{owner} now signs with {}", key.kid())),
        )
        .await?;
    Ok(Json(RotatedKey {
        kid: key.kid().to_owned(),
    }))
}
