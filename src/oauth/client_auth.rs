//! OAuth clients: registration and client authentication at the token
//! endpoint, with `client_secret_basic` (RFC 6749 §2.3.1) and
//! `private_key_jwt` (RFC 7523, OpenID Connect Core §9).

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{Client, ClientStatus, OAuthError, OAuthErrorCode, Role};
use crate::audit::{Actor, AuditLog, Outcome};
use crate::error::{Error, Result};
use crate::keys::{constant_time_eq, random_token, Sealer};
use crate::store::{now, timestamp, Store};

/// `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a client read for authentication may be reused.
pub const CLIENT_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest accepted clock skew, seconds.
pub const CLOCK_SKEW: u64 = 10;

/// A client to register.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// For issuers: the unified social credit code of the issuing unit.
    #[serde(default)]
    pub issuer_id: Option<String>,
    /// Public keys for `private_key_jwt`; when given no secret is issued.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<Value>,
    /// Where the client publishes its keys (https, or http on loopback);
    /// fetched now and again when an assertion names an unknown key.
    #[serde(default)]
    pub jwks_uri: Option<String>,
}

/// A registered client, with its secret shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedClient {
    /// client_id.
    pub client_id: String,
    /// The client secret (only for `client_secret_basic`); not retrievable later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Role.
    pub role: Role,
    /// Issuing unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer_id: Option<String>,
    /// `client_secret_basic` or `private_key_jwt`.
    pub token_endpoint_auth_method: String,
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    jti: Option<String>,
    exp: i64,
}

/// Registers and authenticates clients.
pub struct Clients {
    /// Clients recently read for client authentication at the token endpoint,
    /// for [`CLIENT_CACHE_TTL`]: a token minted from a just-stale entry is
    /// still refused on its first use, because every API call reads the
    /// client's status afresh.
    cache: std::sync::RwLock<HashMap<String, (std::time::Instant, Client)>>,
    http: reqwest::Client,
    fetched: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    store: Store,
    audit: Arc<AuditLog>,
    sealer: Arc<Sealer>,
    audiences: [String; 2],
    limits: Arc<crate::limits::RateLimits>,
}

impl Clients {
    /// Clients of the broker at `public_url`.
    pub fn new(
        store: Store,
        sealer: Arc<Sealer>,
        audit: Arc<AuditLog>,
        public_url: &str,
        limits: Arc<crate::limits::RateLimits>,
    ) -> Self {
        Clients {
            limits,
            cache: Default::default(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            fetched: Default::default(),
            store,
            audit,
            sealer,
            audiences: [public_url.to_owned(), format!("{public_url}/token")],
        }
    }

    /// Registers a client. Issuers must name an existing issuing unit.
    pub async fn create(&self, actor: &Actor, req: NewClient) -> Result<CreatedClient> {
        let prefix = match req.role {
            Role::Operator => "op",
            Role::Issuer => "iss",
            Role::Entity => "ent",
            Role::Regulator => "reg",
        };
        let client_id = format!("{prefix}_{}", random_token(12)?);
        self.create_with_id(actor, client_id, req).await
    }

    /// Registers a client under a given id (an approved entity's client id is its entity id).
    pub async fn create_with_id(
        &self,
        actor: &Actor,
        client_id: String,
        req: NewClient,
    ) -> Result<CreatedClient> {
        if req.name.trim().is_empty() || req.name.chars().count() > 200 {
            return Err(Error::invalid_field("name", "must be 1-200 characters"));
        }
        match (req.role, &req.issuer_id) {
            (Role::Issuer, None) => {
                return Err(Error::invalid_field(
                    "issuer_id",
                    "an issuer client needs its issuing unit",
                ))
            }
            (Role::Issuer, Some(id)) if self.store.issuer(id).await?.is_none() => {
                return Err(Error::invalid_field(
                    "issuer_id",
                    format!("no issuing unit {id}"),
                ))
            }
            (Role::Issuer, Some(_)) => {}
            (_, Some(_)) => {
                return Err(Error::invalid_field(
                    "issuer_id",
                    "only issuer clients have an issuing unit",
                ))
            }
            (_, None) => {}
        }
        if req.jwks_uri.as_deref().is_some_and(|u| !valid_jwks_uri(u)) {
            return Err(Error::invalid_field(
                "jwks_uri",
                "must be https (or http on loopback)",
            ));
        }
        // Keys given with a URI are the URI's current keys (already fetched).
        let jwks = match (&req.jwks, &req.jwks_uri) {
            (Some(j), _) => Some(validate_jwks(j)?),
            (None, Some(uri)) => Some(self.fetch_jwks(uri).await?),
            (None, None) => None,
        };
        let secret = match jwks {
            Some(_) => None,
            None => Some(format!("lgs_{}", random_token(32)?)),
        };
        let client = Client {
            client_id: client_id.clone(),
            name: req.name.trim().to_owned(),
            role: req.role,
            issuer_id: req.issuer_id.clone(),
            secret_digest: secret.as_deref().map(|s| self.sealer.secret_digest(s)),
            jwks,
            jwks_uri: req.jwks_uri.clone(),
            status: ClientStatus::Active,
            previous_secret: None,
        };
        self.store.insert_client(&client, &timestamp(now())).await?;
        self.audit
            .record(
                actor
                    .event("client.registered", Outcome::Success)
                    .reason(format!(
                        "client {} ({}) role {}",
                        client.client_id,
                        client.name,
                        client.role.as_str()
                    )),
            )
            .await?;
        Ok(CreatedClient {
            client_id,
            token_endpoint_auth_method: if secret.is_some() {
                "client_secret_basic"
            } else {
                "private_key_jwt"
            }
            .into(),
            client_secret: secret,
            role: req.role,
            issuer_id: req.issuer_id,
        })
    }

    /// A client by id, read from the database (for authorization decisions).
    pub async fn get(&self, client_id: &str) -> Result<Option<Client>> {
        self.store.client(client_id).await
    }

    /// A client for authentication at the token endpoint, possibly from the
    /// short-lived cache (saves a database round trip per token).
    async fn for_authentication(&self, client_id: &str) -> Result<Option<Client>> {
        if let Some(c) = self.cache.read().ok().and_then(|m| {
            m.get(client_id)
                .filter(|(at, _)| at.elapsed() < CLIENT_CACHE_TTL)
                .map(|(_, c)| c.clone())
        }) {
            return Ok(Some(c));
        }
        let client = self.store.client(client_id).await?;
        if let (Some(c), Ok(mut m)) = (&client, self.cache.write()) {
            if m.len() > 100_000 {
                m.clear();
            }
            m.insert(client_id.to_owned(), (std::time::Instant::now(), c.clone()));
        }
        Ok(client)
    }

    /// Drops a client from the authentication cache (after a change to it).
    pub fn forget(&self, client_id: &str) {
        if let Ok(mut m) = self.cache.write() {
            m.remove(client_id);
        }
    }

    /// Fetches and checks a JWKS document (at most 64 KiB, asymmetric public keys only).
    pub async fn fetch_jwks(&self, uri: &str) -> Result<String> {
        let unavailable =
            |why: String| Error::invalid_field("jwks_uri", format!("cannot fetch the JWKS: {why}"));
        let res = self
            .http
            .get(uri)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !res.status().is_success() {
            return Err(unavailable(format!("HTTP {}", res.status())));
        }
        if res.content_length().is_some_and(|n| n > 65_536) {
            return Err(unavailable("larger than 64 KiB".into()));
        }
        let body = res.bytes().await.map_err(|e| unavailable(e.to_string()))?;
        if body.len() > 65_536 {
            return Err(unavailable("larger than 64 KiB".into()));
        }
        let v: Value =
            serde_json::from_slice(&body).map_err(|e| unavailable(format!("not JSON: {e}")))?;
        validate_jwks(&v)
    }

    /// The client's keys, fetched again from its JWKS URI when `kid` is not
    /// among them (the client rotated its keys); at most once a minute per client.
    async fn keys_with(&self, client: &Client, kid: Option<&str>) -> Option<JwkSet> {
        let current: Option<JwkSet> = client
            .jwks
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok());
        let known = match (&current, kid) {
            (Some(set), Some(kid)) => set.find(kid).is_some(),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let Some(uri) = client.jwks_uri.as_deref().filter(|_| !known) else {
            return current;
        };
        let due = match self.fetched.lock() {
            Ok(mut m) => {
                let due = m
                    .get(&client.client_id)
                    .is_none_or(|t| t.elapsed().as_secs() >= 60);
                if due {
                    m.insert(client.client_id.clone(), std::time::Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if !due {
            return current;
        }
        match self.fetch_jwks(uri).await {
            Ok(fresh) => {
                if let Err(e) = self.store.set_client_jwks(&client.client_id, &fresh).await {
                    tracing::warn!(error = %e, "cannot store refreshed JWKS");
                }
                serde_json::from_str(&fresh).ok()
            }
            Err(e) => {
                tracing::warn!(client = %client.client_id, error = %e, "JWKS refresh failed");
                current
            }
        }
    }

    /// Issues a new secret; the previous one keeps working for `grace_secs`
    /// (0: at once invalid), so that a client can switch without downtime.
    pub async fn rotate_secret(
        &self,
        actor: &Actor,
        client_id: &str,
        grace_secs: i64,
    ) -> Result<String> {
        let secret = format!("lgs_{}", random_token(32)?);
        let until = now().unix_timestamp() + grace_secs.max(0);
        if !self
            .store
            .rotate_client_secret(
                client_id,
                &self.sealer.secret_digest(&secret),
                until,
                &timestamp(now()),
            )
            .await?
        {
            return Err(Error::Conflict(format!(
                "client {client_id} has no secret to rotate"
            )));
        }
        // After the write, so that no concurrent read can cache the old secret again.
        self.forget(client_id);
        self.audit
            .record(
                actor
                    .event("client.secret_rotated", Outcome::Success)
                    .reason(format!(
                        "client {client_id}; previous secret valid for {grace_secs} s"
                    )),
            )
            .await?;
        Ok(secret)
    }

    /// Authenticates the client of an OAuth request and requires it to be
    /// active: what every endpoint that acts for a client needs.
    pub async fn authenticate_active(
        &self,
        authorization: Option<&str>,
        params: &HashMap<String, String>,
    ) -> Result<Client, OAuthError> {
        let client = self.authenticate(authorization, params).await?;
        if client.status != super::ClientStatus::Active {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidClient,
                "the client is suspended",
            ));
        }
        if let Err(wait) = self.limits.client(&client.client_id) {
            return Err(OAuthError::rate_limited(wait.retry_after()));
        }
        Ok(client)
    }

    /// Authenticates the client of a token request, by exactly one method.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        params: &HashMap<String, String>,
    ) -> Result<Client, OAuthError> {
        let basic = authorization
            .map(|h| h.trim())
            .filter(|h| h.len() > 6 && h[..6].eq_ignore_ascii_case("basic "));
        let assertion = params.get("client_assertion");
        if params.contains_key("client_secret") {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidClient,
                "client_secret_post is not supported; use client_secret_basic or private_key_jwt",
            ));
        }
        match (basic, assertion) {
            (Some(_), Some(_)) => Err(OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                "use one client authentication method, not several",
            )),
            (Some(h), None) => self
                .authenticate_basic(&h[6..], params)
                .await
                .map_err(|mut e| {
                    e.basic_challenge = true;
                    e
                }),
            (None, Some(jwt)) => self.authenticate_assertion(jwt, params).await,
            (None, None) => {
                let mut e = OAuthError::new(
                    OAuthErrorCode::InvalidClient,
                    "client authentication is required",
                );
                e.basic_challenge = true;
                Err(e)
            }
        }
    }

    async fn authenticate_basic(
        &self,
        encoded: &str,
        params: &HashMap<String, String>,
    ) -> Result<Client, OAuthError> {
        let invalid = || {
            OAuthError::new(
                OAuthErrorCode::InvalidClient,
                "client authentication failed",
            )
        };
        let decoded = STANDARD.decode(encoded.trim()).map_err(|_| {
            OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                "malformed Basic credentials",
            )
        })?;
        let decoded = String::from_utf8(decoded).map_err(|_| {
            OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                "malformed Basic credentials",
            )
        })?;
        let (id, secret) = decoded.split_once(':').ok_or_else(|| {
            OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                "malformed Basic credentials",
            )
        })?;
        // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
        let id = url_decode(id);
        let secret = url_decode(secret);
        if params.get("client_id").is_some_and(|p| *p != id) {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                "client_id does not match the credentials",
            ));
        }
        let digest = self.sealer.secret_digest(&secret);
        let client = self.for_authentication(&id).await?;
        let now = now().unix_timestamp();
        match client {
            Some(c)
                if c.secret_digest
                    .as_deref()
                    .is_some_and(|d| constant_time_eq(d, &digest)) =>
            {
                Ok(c)
            }
            // During a rotation the previous secret keeps working until its deadline.
            Some(c)
                if c.previous_secret
                    .as_ref()
                    .is_some_and(|(d, until)| *until > now && constant_time_eq(d, &digest)) =>
            {
                Ok(c)
            }
            _ => Err(invalid()),
        }
    }

    async fn authenticate_assertion(
        &self,
        jwt: &str,
        params: &HashMap<String, String>,
    ) -> Result<Client, OAuthError> {
        let (header, client_id) = assertion_claimant(jwt, params)?;
        let client = self
            .store
            .client(&client_id)
            .await?
            .ok_or_else(|| assertion_refused("unknown client"))?;
        let jwks = self
            .keys_with(&client, header.kid.as_deref())
            .await
            .ok_or_else(|| assertion_refused("the client has no registered keys"))?;
        let (jti, exp) = check_assertion(
            jwt,
            &header,
            &client_id,
            &jwks,
            &self.audiences,
            now().unix_timestamp(),
        )?;
        if !self
            .store
            .record_assertion(
                &format!("{client_id}:{jti}"),
                &client_id,
                exp + CLOCK_SKEW as i64,
            )
            .await?
        {
            return Err(assertion_refused("this assertion was already used"));
        }
        Ok(client)
    }
}

fn assertion_refused(why: &str) -> OAuthError {
    OAuthError::new(
        OAuthErrorCode::InvalidClient,
        format!("client assertion refused: {why}"),
    )
}

/// The header of a JWT client assertion (RFC 7523) and the client it names
/// (its unverified `sub`), before any key is looked up: nothing is trusted
/// until [`check_assertion`] has checked the signature against that client's keys.
pub fn assertion_claimant(
    jwt: &str,
    params: &HashMap<String, String>,
) -> Result<(jsonwebtoken::Header, String), OAuthError> {
    if params.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidRequest,
            format!("client_assertion_type must be {JWT_BEARER}"),
        ));
    }
    let header =
        jsonwebtoken::decode_header(jwt).map_err(|_| assertion_refused("malformed JWT"))?;
    if !matches!(
        header.alg,
        Algorithm::ES256 | Algorithm::PS256 | Algorithm::EdDSA
    ) {
        return Err(assertion_refused("alg must be ES256, PS256 or EdDSA"));
    }
    let client_id = unverified_subject(jwt).ok_or_else(|| assertion_refused("no sub"))?;
    if params.get("client_id").is_some_and(|p| *p != client_id) {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidRequest,
            "client_id does not match the assertion",
        ));
    }
    Ok((header, client_id))
}

/// Checks a client assertion against the client's registered `jwks`: the
/// key named by `kid` (or the only key), signature, issuer and subject (the
/// client), audience (one of `audiences`), expiry (not more than an hour after
/// `now`), `nbf` and `jti`. Returns the `jti` and `exp` for the replay check.
pub fn check_assertion(
    jwt: &str,
    header: &jsonwebtoken::Header,
    client_id: &str,
    jwks: &JwkSet,
    audiences: &[String],
    now: i64,
) -> Result<(String, i64), OAuthError> {
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid),
        None if jwks.keys.len() == 1 => jwks.keys.first(),
        None => None,
    }
    .ok_or_else(|| assertion_refused("no registered key matches the kid"))?;
    let key =
        DecodingKey::from_jwk(jwk).map_err(|_| assertion_refused("registered key is unusable"))?;
    let mut v = Validation::new(header.alg);
    v.leeway = CLOCK_SKEW;
    v.validate_nbf = true;
    v.set_audience(audiences);
    v.set_issuer(&[client_id]);
    v.sub = Some(client_id.to_owned());
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let claims = jsonwebtoken::decode::<AssertionClaims>(jwt, &key, &v)
        .map_err(|e| assertion_refused(&e.to_string()))?
        .claims;
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| assertion_refused("jti is required"))?;
    if claims.exp > now.saturating_add(3600) {
        return Err(assertion_refused("exp is more than an hour away"));
    }
    Ok((jti, claims.exp))
}

/// A JWKS URI: https, or http on the loopback interface (development and tests).
pub fn valid_jwks_uri(uri: &str) -> bool {
    is_https_or_loopback(uri)
}

/// https, or plain http to the loopback interface only; at most 2,000 characters.
pub fn is_https_or_loopback(uri: &str) -> bool {
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|p| {
            uri.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
        });
    (uri.starts_with("https://") || loopback) && uri.len() <= 2000
}

/// The client a token request claims to come from, before authentication
/// (for the audit record of a refusal).
pub fn claimed_client(
    authorization: Option<&str>,
    params: &HashMap<String, String>,
) -> Option<String> {
    let from_basic = authorization
        .map(str::trim)
        .filter(|h| h.len() > 6 && h[..6].eq_ignore_ascii_case("basic "))
        .and_then(|h| STANDARD.decode(h[6..].trim()).ok())
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|d| d.split_once(':').map(|(id, _)| url_decode(id)));
    from_basic
        .or_else(|| {
            params
                .get("client_assertion")
                .and_then(|a| unverified_subject(a))
        })
        .or_else(|| params.get("client_id").cloned())
        .map(|id| id.chars().take(128).collect())
}

fn url_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn unverified_subject(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sub")?.as_str().map(str::to_owned)
}

/// Checks a JWKS for `private_key_jwt`: asymmetric public keys only.
pub(crate) fn validate_jwks(v: &Value) -> Result<String> {
    let set: JwkSet = serde_json::from_value(v.clone())
        .map_err(|e| Error::invalid_field("jwks", format!("not a JWK set: {e}")))?;
    if set.keys.is_empty() {
        return Err(Error::invalid_field("jwks", "must hold at least one key"));
    }
    for (i, key) in v["keys"].as_array().into_iter().flatten().enumerate() {
        if ["d", "p", "q", "dp", "dq", "qi", "k"]
            .iter()
            .any(|m| key.get(m).is_some())
        {
            return Err(Error::invalid_field(
                format!("jwks.keys[{i}]"),
                "holds private key material",
            ));
        }
    }
    if set
        .keys
        .iter()
        .any(|k| matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
    {
        return Err(Error::invalid_field(
            "jwks",
            "symmetric keys are not accepted",
        ));
    }
    Ok(v.to_string())
}
