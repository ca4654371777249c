//! JWT access tokens (RFC 9068) signed with the broker's key, and the
//! `client_credentials` grant of the token endpoint.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::client_auth::Clients;
use super::{Client, ClientStatus, OAuthError, OAuthErrorCode};
use crate::audit::{Actor, AuditLog, Outcome};
use crate::error::{Error, Result};
use crate::keys::{random_token, KeyRing, BROKER};
use crate::store::now;

/// Media type of access tokens (RFC 9068 §2.1).
pub const AT_TYP: &str = "at+jwt";

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The broker.
    pub iss: String,
    /// The client (client_credentials) or, later, the holder.
    pub sub: String,
    /// The resource server: this broker's API.
    pub aud: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires at (unix seconds).
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// Space-separated scopes.
    pub scope: String,
    /// The issuing unit an issuer client acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuing_unit: Option<String>,
    /// The client's role (operator, issuer, entity, regulator).
    pub role: super::Role,
}

impl AccessClaims {
    /// The audit actor of this token's client.
    pub fn actor(&self) -> crate::audit::Actor {
        crate::audit::Actor::client(self.role, &self.client_id)
    }

    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}

/// Issues and verifies access tokens.
pub struct AccessTokens {
    keys: Arc<KeyRing>,
    issuer: String,
    ttl: i64,
}

impl AccessTokens {
    /// Tokens with issuer `issuer` (the public URL) lasting `ttl` seconds.
    pub fn new(keys: Arc<KeyRing>, issuer: String, ttl: u64) -> Self {
        AccessTokens {
            keys,
            issuer,
            ttl: i64::try_from(ttl).unwrap_or(300),
        }
    }

    /// Signs a token for `client` with `scope`.
    pub async fn issue(&self, client: &Client, scope: String) -> Result<(String, AccessClaims)> {
        let key = self.keys.active(BROKER).await?;
        let iat = now().unix_timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: client.client_id.clone(),
            aud: self.issuer.clone(),
            client_id: client.client_id.clone(),
            iat,
            exp: iat + self.ttl,
            jti: random_token(16)?,
            scope,
            issuing_unit: client.issuer_id.clone(),
            role: client.role,
        };
        Ok((key.sign_jws(AT_TYP, &claims)?, claims))
    }

    /// Verifies a bearer token: signature by a broker key, `typ`, issuer,
    /// audience and expiry (10 s leeway).
    pub async fn verify(&self, token: &str) -> Result<AccessClaims> {
        let bad = |why: &str| Error::Unauthorized(format!("the access token is not valid: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed"))?;
        if header.alg != Algorithm::EdDSA
            || !header
                .typ
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(AT_TYP))
        {
            return Err(bad("not an access token of this server"));
        }
        let kid = header.kid.ok_or_else(|| bad("no key id"))?;
        let public = self
            .keys
            .verifying_key(BROKER, &kid)
            .await?
            .ok_or_else(|| bad("unknown signing key"))?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = 10;
        v.set_audience(&[&self.issuer]);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<AccessClaims>(token, &DecodingKey::from_ed_der(&public), &v)
            .map(|d| d.claims)
            .map_err(|e| bad(&e.to_string()))
    }
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// The access token (a JWT, RFC 9068).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Lifetime in seconds.
    pub expires_in: i64,
    /// Granted scopes.
    pub scope: String,
}

/// Parses an `application/x-www-form-urlencoded` body; a parameter given
/// twice is an error (RFC 6749 §3.2).
pub fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut params = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if params.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                format!("parameter {k} is given more than once"),
            ));
        }
    }
    Ok(params)
}

/// The token endpoint: authenticates the client and runs the grant.
pub async fn token_request(
    clients: &Clients,
    audit: &AuditLog,
    tokens: &AccessTokens,
    authorization: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<TokenResponse, OAuthError> {
    let grant_type = params
        .get("grant_type")
        .ok_or_else(|| OAuthError::new(OAuthErrorCode::InvalidRequest, "grant_type is required"))?;
    let client = clients.authenticate(authorization, params).await?;
    if client.status != ClientStatus::Active {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidClient,
            "the client is suspended",
        ));
    }
    match grant_type.as_str() {
        "client_credentials" => {}
        "authorization_code" | "refresh_token" | "urn:openid:params:grant-type:ciba" => {
            return Err(OAuthError::new(
                OAuthErrorCode::UnsupportedGrantType,
                format!("grant type {grant_type} is not enabled on this server"),
            ))
        }
        other => {
            return Err(OAuthError::new(
                OAuthErrorCode::UnsupportedGrantType,
                format!("grant type {other:?} is not supported"),
            ))
        }
    }
    let allowed = client.role.scopes();
    if allowed.is_empty() {
        return Err(OAuthError::new(
            OAuthErrorCode::UnauthorizedClient,
            "this client may not use client_credentials",
        ));
    }
    let scope = match params.get("scope") {
        None => allowed.join(" "),
        Some(requested) => {
            let mut granted: Vec<&str> = Vec::new();
            for s in requested.split(' ').filter(|s| !s.is_empty()) {
                if !allowed.contains(&s) {
                    return Err(OAuthError::new(
                        OAuthErrorCode::InvalidScope,
                        format!("scope {s:?} is not allowed for this client"),
                    ));
                }
                if !granted.contains(&s) {
                    granted.push(s);
                }
            }
            if granted.is_empty() {
                return Err(OAuthError::new(
                    OAuthErrorCode::InvalidScope,
                    "scope is empty",
                ));
            }
            granted.join(" ")
        }
    };
    let (access_token, claims) = tokens.issue(&client, scope).await?;
    // The token is handed out only once its issuance is on record.
    audit
        .record(
            Actor::client(client.role, &client.client_id)
                .event("token.issued", Outcome::Success)
                .reason(format!(
                    "client_credentials scope={} jti={}",
                    claims.scope, claims.jti
                )),
        )
        .await?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: claims.exp - claims.iat,
        scope: claims.scope,
    })
}

/// An RFC 7662 introspection response.
#[derive(Debug, Serialize, ToSchema, Default)]
pub struct Introspection {
    /// Whether the token is valid now.
    pub active: bool,
    /// Scopes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Client it was issued to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issued at (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Token id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Always `Bearer` for active tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
}

/// Introspection (RFC 7662): a client learns about its own tokens; operators
/// and regulators about any. Anything else, like any invalid, expired or
/// revoked token or a token of a suspended client, is just `active: false`.
pub async fn introspect(
    store: &crate::store::Store,
    tokens: &AccessTokens,
    caller: &Client,
    token: &str,
) -> Result<Introspection> {
    let Ok(claims) = tokens.verify(token).await else {
        return Ok(Introspection::default());
    };
    let may_see = claims.client_id == caller.client_id
        || matches!(caller.role, super::Role::Operator | super::Role::Regulator);
    if !may_see {
        return Ok(Introspection::default());
    }
    match store
        .client_status_and_revocation(&claims.client_id, &claims.jti)
        .await?
    {
        Some((status, false)) if status == ClientStatus::Active.as_str() => Ok(Introspection {
            active: true,
            scope: Some(claims.scope),
            client_id: Some(claims.client_id),
            sub: Some(claims.sub),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            iss: Some(claims.iss),
            aud: Some(claims.aud),
            jti: Some(claims.jti),
            token_type: Some("Bearer"),
        }),
        _ => Ok(Introspection::default()),
    }
}

/// Revocation (RFC 7009): a client revokes a token issued to it. Tokens that
/// are invalid or already expired need no revocation and are acknowledged.
pub async fn revoke(
    store: &crate::store::Store,
    tokens: &AccessTokens,
    audit: &AuditLog,
    caller: &Client,
    token: &str,
) -> Result<(), OAuthError> {
    let Ok(claims) = tokens.verify(token).await else {
        return Ok(());
    };
    if claims.client_id != caller.client_id {
        return Err(OAuthError::new(
            OAuthErrorCode::UnauthorizedClient,
            "this token was not issued to the client revoking it",
        ));
    }
    store
        .revoke_token(
            &claims.jti,
            &claims.client_id,
            claims.exp + 10,
            &crate::store::timestamp(now()),
        )
        .await?;
    audit
        .record(
            Actor::client(caller.role, &caller.client_id)
                .event("token.revoked", Outcome::Success)
                .reason(format!("jti={}", claims.jti)),
        )
        .await?;
    Ok(())
}
