//! JWT access tokens (RFC 9068) signed with the broker's key, and the
//! `client_credentials` grant of the token endpoint.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Client, ClientStatus, OAuthError, OAuthErrorCode};
use crate::audit::{Actor, AuditLog, Outcome};
use crate::error::{Error, Result};
use crate::keys::{random_token, KeyRing, BROKER};
use crate::store::cache::Kept;
use crate::store::now;

/// Clock skew allowed on an access token's expiry, in seconds.
const LEEWAY: i64 = 10;

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
    /// Space-separated scopes (client_credentials tokens; consent tokens carry
    /// `authorization_details` instead).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The issuing unit an issuer client acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuing_unit: Option<String>,
    /// The client's role (operator, issuer, entity, regulator).
    pub role: super::Role,
    /// The holder's consent this token acts under (also its grant id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<String>,
    /// What the consent covers (RFC 9396).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<serde_json::Value>,
    /// Sender constraint (RFC 9449 §6): the thumbprint of the client's DPoP key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The `cnf` claim of a DPoP-bound token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Confirmation {
    /// JWK SHA-256 thumbprint (RFC 7638) of the DPoP key.
    pub jkt: String,
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
    /// The claims of tokens whose signature, issuer and audience this node
    /// has checked, by the SHA-256 of the whole token. An entity sends the
    /// same token on every call until it expires; its Ed25519 signature was
    /// the largest cost of a retrieval (`perf`: 13% of the samples of `cargo
    /// bench --bench consent -- 20000 64 retrievals`) and cannot change its
    /// answer for the same bytes: broker keys are never deleted (retired keys
    /// still verify, as in the JWKS) and a key's public part is cached for
    /// good anyway ([`KeyRing::verifying_key`]). What can change is checked on
    /// every use: expiry here, revocation and the consent, client and
    /// policies by the caller. Only tokens that verified are kept, so a
    /// forged token costs a full verification every time.
    verified: Kept<[u8; 32], Arc<AccessClaims>>,
}

impl AccessTokens {
    /// Tokens with issuer `issuer` (the public URL) lasting `ttl` seconds.
    pub fn new(keys: Arc<KeyRing>, issuer: String, ttl: u64) -> Self {
        AccessTokens {
            keys,
            issuer,
            ttl: i64::try_from(ttl).unwrap_or(300),
            verified: Kept::default(),
        }
    }

    fn claims(&self, client: &Client, sub: &str, scope: String) -> Result<AccessClaims> {
        let iat = now().unix_timestamp();
        Ok(AccessClaims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.issuer.clone(),
            client_id: client.client_id.clone(),
            iat,
            exp: iat + self.ttl,
            jti: random_token(16)?,
            scope,
            issuing_unit: client.issuer_id.clone(),
            role: client.role,
            consent: None,
            authorization_details: None,
            cnf: None,
        })
    }

    async fn sign(&self, claims: AccessClaims) -> Result<(String, AccessClaims)> {
        let key = self.keys.active(BROKER).await?;
        Ok((key.sign_jws(AT_TYP, &claims)?, claims))
    }

    /// Signs a token for `client` with `scope`.
    pub async fn issue(&self, client: &Client, scope: String) -> Result<(String, AccessClaims)> {
        let claims = self.claims(client, &client.client_id, scope)?;
        self.sign(claims).await
    }

    /// Signs a token acting for a holder under a consent: its subject is the
    /// holder, it carries the consent id and what it covers, never outlives
    /// the consent, and is bound to a DPoP key when `jkt` is given.
    pub async fn issue_for_consent(
        &self,
        client: &Client,
        consent: &crate::store::consent::ConsentRow,
        jkt: Option<String>,
    ) -> Result<(String, AccessClaims)> {
        let mut claims = self.claims(client, &consent.holder_id, String::new())?;
        claims.exp = claims.exp.min(consent.expires_at);
        claims.consent = Some(consent.id.clone());
        claims.authorization_details =
            Some(serde_json::from_str(&consent.details).map_err(crate::error::Error::internal)?);
        claims.cnf = jkt.map(|jkt| Confirmation { jkt });
        self.sign(claims).await
    }

    /// Verifies a bearer token: signature by a broker key, `typ`, issuer,
    /// audience and expiry (10 s leeway).
    pub async fn verify(&self, token: &str) -> Result<AccessClaims> {
        self.verify_at(token, now().unix_timestamp()).await
    }

    /// [`Self::verify`] as of `now_unix` for a token verified before (a
    /// token seen for the first time is checked against the clock).
    async fn verify_at(&self, token: &str, now_unix: i64) -> Result<AccessClaims> {
        let digest = crate::keys::sha256(token);
        if let Some(claims) = self.verified.get(&digest) {
            // As `decode_access_token` checks it, with the same leeway.
            if claims.exp + LEEWAY < now_unix {
                return Err(token_refused("ExpiredSignature"));
            }
            return Ok(AccessClaims::clone(&claims));
        }
        let kid = access_token_kid(token)?;
        let public = self
            .keys
            .verifying_key(BROKER, &kid)
            .await?
            .ok_or_else(|| token_refused("unknown signing key"))?;
        let claims = decode_access_token(token, &self.issuer, &public)?;
        self.verified.put(digest, Arc::new(claims.clone()));
        Ok(claims)
    }
}

fn token_refused(why: &str) -> Error {
    Error::Unauthorized(format!("the access token is not valid: {why}"))
}

/// The key id of what claims to be an access token of this server (RFC 9068
/// `typ`, EdDSA), read from its header before any key is looked up.
pub fn access_token_kid(token: &str) -> Result<String> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| token_refused("malformed"))?;
    if header.alg != Algorithm::EdDSA
        || !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(AT_TYP))
    {
        return Err(token_refused("not an access token of this server"));
    }
    header.kid.ok_or_else(|| token_refused("no key id"))
}

/// Checks an access token's Ed25519 signature with `public` (raw key bytes)
/// and its claims: issuer and audience `issuer`, expiry (10 s leeway), `sub`.
pub fn decode_access_token(token: &str, issuer: &str, public: &[u8]) -> Result<AccessClaims> {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.leeway = LEEWAY as u64;
    v.set_audience(&[issuer]);
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<AccessClaims>(token, &DecodingKey::from_ed_der(public), &v)
        .map(|d| d.claims)
        .map_err(|e| token_refused(&e.to_string()))
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// The access token (a JWT, RFC 9068).
    pub access_token: String,
    /// `Bearer`, or `DPoP` for a sender-constrained token.
    pub token_type: &'static str,
    /// Lifetime in seconds.
    pub expires_in: i64,
    /// Granted scopes (client_credentials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// A refresh token, bound to the client (and its DPoP key), lasting as long as the consent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// What the token covers (RFC 9396).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::consent::GrantedAccess>>)]
    pub authorization_details: Option<serde_json::Value>,
    /// The consent, for FAPI Grant Management (`/grants/{grant_id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
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

/// The token endpoint: authenticates the client and runs the grant. `dpop`
/// is the DPoP proof header, if any.
pub async fn token_request(
    services: &crate::app::Services,
    authorization: Option<&str>,
    dpop: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<TokenResponse, OAuthError> {
    let grant_type = params
        .get("grant_type")
        .ok_or_else(|| OAuthError::new(OAuthErrorCode::InvalidRequest, "grant_type is required"))?;
    let client = services
        .clients
        .authenticate_active(authorization, params)
        .await?;
    let grant = super::grants::TokenGrant {
        services,
        client: &client,
        dpop,
        params,
    };
    match grant_type.as_str() {
        "client_credentials" => {
            client_credentials(&services.audit, &services.tokens, &client, params).await
        }
        "authorization_code" => grant.authorization_code().await,
        "refresh_token" => grant.refresh().await,
        super::grants::CIBA_GRANT => grant.ciba().await,
        super::grants::SHOW_GRANT => grant.show_code().await,
        other => Err(OAuthError::new(
            OAuthErrorCode::UnsupportedGrantType,
            format!("grant type {other:?} is not supported"),
        )),
    }
}

async fn client_credentials(
    audit: &AuditLog,
    tokens: &AccessTokens,
    client: &Client,
    params: &HashMap<String, String>,
) -> Result<TokenResponse, OAuthError> {
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
    let (access_token, claims) = tokens.issue(client, scope).await?;
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
        scope: Some(claims.scope),
        refresh_token: None,
        authorization_details: None,
        grant_id: None,
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
    /// `Bearer`, or `DPoP` for a sender-constrained token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    /// The consent (grant) the token acts under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// What the token covers (RFC 9396 §9.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::consent::GrantedAccess>>)]
    pub authorization_details: Option<serde_json::Value>,
    /// The DPoP key the token is bound to (RFC 9449 §6.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
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
    let usable = match &claims.consent {
        // A token acting for a holder lives only as long as its consent.
        Some(consent) => matches!(
            store.consent_for_call(&claims.client_id, &claims.jti, consent).await?,
            Some((status, false, c, _)) if status == ClientStatus::Active.as_str()
                && crate::consent::effective_consent_status(&c, now().unix_timestamp()) == "active"
        ),
        None => matches!(
            store
                .client_status_and_revocation(&claims.client_id, &claims.jti)
                .await?,
            Some((status, false)) if status == ClientStatus::Active.as_str()
        ),
    };
    match usable {
        true => Ok(Introspection {
            active: true,
            scope: (!claims.scope.is_empty()).then_some(claims.scope),
            client_id: Some(claims.client_id),
            sub: Some(claims.sub),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            iss: Some(claims.iss),
            aud: Some(claims.aud),
            jti: Some(claims.jti),
            token_type: Some(if claims.cnf.is_some() {
                "DPoP"
            } else {
                "Bearer"
            }),
            grant_id: claims.consent,
            authorization_details: claims.authorization_details,
            cnf: claims.cnf,
        }),
        false => Ok(Introspection::default()),
    }
}

/// Revocation (RFC 7009): a client revokes an access or refresh token issued
/// to it. The consent stays: revoking a token is not withdrawing consent.
/// Tokens that are invalid or already expired need no revocation and are
/// acknowledged.
pub async fn revoke(
    store: &crate::store::Store,
    tokens: &AccessTokens,
    audit: &AuditLog,
    caller: &Client,
    token: &str,
) -> Result<(), OAuthError> {
    let Ok(claims) = tokens.verify(token).await else {
        return revoke_refresh(store, audit, caller, token).await;
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

async fn revoke_refresh(
    store: &crate::store::Store,
    audit: &AuditLog,
    caller: &Client,
    token: &str,
) -> Result<(), OAuthError> {
    let digest = crate::keys::sha256(token);
    let Some(row) = store.refresh(&digest).await? else {
        return Ok(());
    };
    if row.client_id != caller.client_id {
        return Err(OAuthError::new(
            OAuthErrorCode::UnauthorizedClient,
            "this token was not issued to the client revoking it",
        ));
    }
    if store
        .revoke_refresh(&digest, &crate::store::timestamp(now()))
        .await?
    {
        let mut e = Actor::client(caller.role, &caller.client_id)
            .event("token.revoked", Outcome::Success)
            .reason("refresh token");
        e.consent = Some(row.consent_id);
        audit.record(e).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Settings};

    #[tokio::test]
    async fn a_token_verified_before_is_refused_once_expired_and_other_bytes_are_checked_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let app = crate::App::build(Config::resolve(settings, Settings::default()).unwrap())
            .await
            .unwrap();
        let tokens = &app.services.tokens;
        let client = Client {
            client_id: "c1".into(),
            name: "c1".into(),
            role: super::super::Role::Entity,
            issuer_id: None,
            secret_digest: None,
            jwks: None,
            jwks_uri: None,
            status: ClientStatus::Active,
            previous_secret: None,
        };
        let (token, claims) = tokens.issue(&client, "licenses:read".into()).await.unwrap();
        let first = tokens.verify(&token).await.unwrap();
        assert_eq!(first.jti, claims.jti);
        // Kept: the same answer within its lifetime, refused after it.
        assert_eq!(
            tokens.verify_at(&token, claims.exp).await.unwrap().jti,
            claims.jti
        );
        assert_eq!(
            tokens
                .verify_at(&token, claims.exp + LEEWAY)
                .await
                .unwrap()
                .jti,
            claims.jti
        );
        let late = tokens
            .verify_at(&token, claims.exp + LEEWAY + 1)
            .await
            .unwrap_err();
        assert!(late.to_string().contains("not valid"), "{late}");
        // A token with another signature (one character changed) is not the
        // kept one: verified in full and refused, then and again.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        for _ in 0..2 {
            assert!(tokens.verify(&forged).await.is_err());
        }
        // Another issuer's or audience's token with a valid signature is
        // refused and not kept either.
        let key = app.services.keys.active(BROKER).await.unwrap();
        let other = key
            .sign_jws(
                AT_TYP,
                &AccessClaims {
                    aud: "https://elsewhere.example".into(),
                    ..claims.clone()
                },
            )
            .unwrap();
        for _ in 0..2 {
            assert!(tokens.verify(&other).await.is_err());
        }
    }
}
