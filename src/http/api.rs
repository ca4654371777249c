//! The retrieval API entities call with a holder's consent: list what a
//! token covers, retrieve one license, verify one (核验). Bearer tokens per
//! RFC 6750; sender-constrained tokens per RFC 9449 (`Authorization: DPoP`
//! with a `DPoP` proof naming this URL and the token's hash).

use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiJson;
use crate::app::AppState;
use crate::error::{Error, Problem, Result};
use crate::licenses::retrieval::{
    self, ConsentAccess, Coverage, RetrievedLicense, Verification, VerificationRequest,
};
use crate::oauth::AccessClaims;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_license))
        .routes(routes!(verify))
}

/// A token from a holder's consent, checked in full for this call.
pub struct ConsentToken(pub ConsentAccess);

/// An access token verified for this call (signature, expiry, its DPoP proof
/// when bound); [`retrieval::retrieve`] checks the rest.
pub struct VerifiedToken(pub AccessClaims);

fn invalid(detail: &str, dpop: bool) -> Error {
    Error::TokenRefused {
        insufficient: false,
        detail: detail.into(),
        dpop,
    }
}

impl FromRequestParts<AppState> for ConsentToken {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let VerifiedToken(claims) = VerifiedToken::from_request_parts(parts, state).await?;
        Ok(ConsentToken(retrieval::check_token(state, claims).await?))
    }
}

impl FromRequestParts<AppState> for VerifiedToken {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let value = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| invalid("an access token is required", false))?
            .to_str()
            .map_err(|_| invalid("malformed Authorization header", false))?;
        let (scheme, token) = value
            .split_once(' ')
            .map(|(s, t)| (s, t.trim()))
            .filter(|(_, t)| !t.is_empty())
            .ok_or_else(|| {
                invalid(
                    "the Authorization header must be `Bearer <token>` or `DPoP <token>`",
                    false,
                )
            })?;
        let dpop_scheme = scheme.eq_ignore_ascii_case("dpop");
        if !dpop_scheme && !scheme.eq_ignore_ascii_case("bearer") {
            return Err(invalid("unsupported authorization scheme", false));
        }
        let claims = state
            .tokens
            .verify(token)
            .await
            .map_err(|e| invalid(&e.to_string(), dpop_scheme))?;
        if let Some(slot) = parts.extensions.get::<super::context::ActorSlot>() {
            slot.set(claims.actor());
        }
        match (&claims.cnf, dpop_scheme) {
            (Some(cnf), true) => {
                let proof = parts
                    .headers
                    .get("dpop")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| invalid("a DPoP proof is required with this token", true))?;
                let url = format!(
                    "{}{}",
                    state.config.public_url.trim_end_matches('/'),
                    parts.uri.path()
                );
                let jkt = crate::oauth::dpop::verify(
                    &state.store,
                    proof,
                    parts.method.as_str(),
                    &url,
                    Some(token),
                )
                .await
                .map_err(|e| invalid(&e.description, true))?;
                if jkt != cnf.jkt {
                    return Err(invalid("the DPoP proof is not by the token's key", true));
                }
            }
            (Some(_), false) => {
                return Err(invalid(
                    "this token is sender-constrained: use the DPoP scheme with a proof",
                    true,
                ))
            }
            (None, true) => return Err(invalid("this token is not DPoP-bound", false)),
            (None, false) => {}
        }
        Ok(VerifiedToken(claims))
    }
}

/// Lists the licenses the token's consent covers (no face fields; no budget spent).
#[utoipa::path(
    get, path = "/api/v1/licenses", tag = "retrieval",
    responses(
        (status = 200, description = "What the consent covers", body = Coverage),
        (status = 401, description = "invalid_token (RFC 6750)", body = Problem),
        (status = 403, description = "insufficient_scope", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    ConsentToken(a): ConsentToken,
) -> Result<Json<Coverage>> {
    Ok(Json(retrieval::list(&state, &a).await?))
}

/// Retrieves one license: only the consented fields, the issuer's SD-JWT with
/// their disclosures, and a signed receipt naming the audit record. Spends
/// one retrieval of the consent's budget.
#[utoipa::path(
    get, path = "/api/v1/licenses/{id}", tag = "retrieval",
    params(("id" = String, Path, description = "License identifier (any version) or base id")),
    responses(
        (status = 200, description = "The license", body = RetrievedLicense),
        (status = 401, description = "invalid_token (RFC 6750)", body = Problem),
        (status = 403, description = "Refused by the policies, the use list or the budget", body = Problem),
        (status = 404, description = "Not covered by the consent", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn get_license(
    State(state): State<AppState>,
    VerifiedToken(claims): VerifiedToken,
    Path(id): Path<String>,
) -> Result<Json<RetrievedLicense>> {
    Ok(Json(retrieval::retrieve(&state, claims, &id).await?))
}

/// Verifies a license the entity was shown (核验): authentic, current, status.
#[utoipa::path(
    post, path = "/api/v1/verifications", tag = "retrieval",
    request_body = VerificationRequest,
    responses(
        (status = 200, description = "The verdict", body = Verification),
        (status = 401, description = "invalid_token (RFC 6750)", body = Problem),
        (status = 403, description = "Refused by the policies or the consent", body = Problem),
        (status = 404, description = "Not covered by the consent", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn verify(
    State(state): State<AppState>,
    ConsentToken(a): ConsentToken,
    ApiJson(req): ApiJson<VerificationRequest>,
) -> Result<Json<Verification>> {
    Ok(Json(retrieval::verify(&state, &a, &req).await?))
}
