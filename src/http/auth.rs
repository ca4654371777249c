//! Bearer-token authentication as extractors. A malformed credential is an
//! error, never "anonymous"; a suspended client's tokens stop working at once.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::app::AppState;
use crate::error::{Error, Result};
use crate::licenses::IssuerActor;
use crate::oauth::{scope, AccessClaims, ClientStatus};

/// A verified access token of an active client.
pub struct Bearer(pub AccessClaims);

impl FromRequestParts<AppState> for Bearer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| Error::Unauthorized("a bearer access token is required".into()))?;
        let value = header
            .to_str()
            .map_err(|_| Error::Unauthorized("malformed Authorization header".into()))?;
        let token = match value.split_once(' ') {
            Some((scheme, token))
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
            {
                token.trim()
            }
            _ => {
                return Err(Error::Unauthorized(
                    "the Authorization header must be `Bearer <token>`".into(),
                ))
            }
        };
        let claims = state.tokens.verify(token).await?;
        if let Some(slot) = parts.extensions.get::<super::context::ActorSlot>() {
            slot.set(claims.actor());
        }
        // One round trip for both: the client is still active and the token not revoked.
        match state
            .store
            .client_status_and_revocation(&claims.client_id, &claims.jti)
            .await?
        {
            Some((_, true)) => Err(Error::Unauthorized("this access token was revoked".into())),
            Some((status, false)) if status == ClientStatus::Active.as_str() => Ok(Bearer(claims)),
            _ => Err(Error::Unauthorized(
                "the client of this token is not active".into(),
            )),
        }
    }
}

impl Bearer {
    /// Fails with 403 unless the token carries `scope`.
    pub fn require(self, scope: &str) -> Result<AccessClaims> {
        if self.0.has_scope(scope) {
            Ok(self.0)
        } else {
            Err(Error::Forbidden(format!("this needs the scope {scope}")))
        }
    }
}

/// An operator (scope `catalog:write`).
pub struct Operator(pub AccessClaims);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        Ok(Operator(
            Bearer::from_request_parts(parts, state)
                .await?
                .require(scope::CATALOG_WRITE)?,
        ))
    }
}

/// An issuing unit (scope `licenses:write`).
pub struct IssuerCaller(pub IssuerActor);

impl FromRequestParts<AppState> for IssuerCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let claims = Bearer::from_request_parts(parts, state)
            .await?
            .require(scope::LICENSES_WRITE)?;
        let issuer_id = claims.issuing_unit.ok_or_else(|| {
            Error::Forbidden("this token does not act for an issuing unit".into())
        })?;
        Ok(IssuerCaller(IssuerActor {
            client_id: claims.client_id,
            issuer_id,
        }))
    }
}

/// A regulator (scope `audit:read`).
pub struct Regulator(pub AccessClaims);

impl FromRequestParts<AppState> for Regulator {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        Ok(Regulator(
            Bearer::from_request_parts(parts, state)
                .await?
                .require(scope::AUDIT_READ)?,
        ))
    }
}
