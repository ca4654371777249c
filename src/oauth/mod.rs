//! The authorization server: clients and their authentication, pushed
//! (RFC 9126) and backchannel (CIBA) authorization requests, the holder's
//! decision, the token endpoint with its grants, DPoP (RFC 9449), JWT access
//! tokens (RFC 9068), introspection and revocation.
//!
//! oxide-auth is not used. What it offers is the authorization-code core
//! behind synchronous `Registrar`/`Authorizer`/`Issuer` traits; what this
//! server needs around that core is exactly what it lacks: PAR (the
//! authorization request is never in the browser's URL), RAR
//! `authorization_details` carried into consents and tokens, private_key_jwt
//! client authentication (its registrar checks a passphrase only), DPoP-bound
//! tokens (its issued tokens are bearer only), codes and grants shared by
//! several broker nodes through the database (its authorizers are in-memory,
//! and a database-backed one behind a synchronous trait would block the async
//! runtime), token responses with `grant_id` and `authorization_details`, and
//! RFC 6749 error bodies (its `WebError` renders as a bare 500). Adapting it
//! would have left its PKCE check (one SHA-256 comparison) as the only piece
//! in use, so the code grant is written here in the shape of the rest.

pub mod client_auth;
pub mod dpop;
pub mod flows;
pub mod grants;
pub mod tokens;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

pub use tokens::{AccessClaims, AccessTokens};

/// What a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the broker (大数据中心): catalog, issuers, clients.
    Operator,
    /// An issuing unit (发证单位).
    Issuer,
    /// A social entity that uses licenses (社会化用证主体).
    Entity,
    /// Reviews access (综合管理部门).
    Regulator,
}

impl Role {
    /// Database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Issuer => "issuer",
            Role::Entity => "entity",
            Role::Regulator => "regulator",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "operator" => Ok(Role::Operator),
            "issuer" => Ok(Role::Issuer),
            "entity" => Ok(Role::Entity),
            "regulator" => Ok(Role::Regulator),
            other => Err(Error::internal(format!("unknown role {other:?}"))),
        }
    }

    /// Scopes a client of this role may hold through `client_credentials`.
    pub fn scopes(self) -> &'static [&'static str] {
        match self {
            Role::Operator => &[scope::CATALOG_WRITE, scope::CLIENTS_WRITE],
            Role::Issuer => &[scope::LICENSES_WRITE],
            Role::Regulator => &[scope::AUDIT_READ],
            // Entities read licenses only with tokens from a holder's consent;
            // on their own they may only manage their grants (FAPI Grant Management).
            Role::Entity => &[
                scope::GRANT_MANAGEMENT_QUERY,
                scope::GRANT_MANAGEMENT_REVOKE,
            ],
        }
    }
}

/// Scope names.
pub mod scope {
    /// Manage the catalog and issuing units.
    pub const CATALOG_WRITE: &str = "catalog:write";
    /// Manage OAuth clients.
    pub const CLIENTS_WRITE: &str = "clients:write";
    /// Publish and manage one's own licenses (issuing units).
    pub const LICENSES_WRITE: &str = "licenses:write";
    /// Read the audit log (regulators).
    pub const AUDIT_READ: &str = "audit:read";
    /// Read one's grants (FAPI Grant Management).
    pub const GRANT_MANAGEMENT_QUERY: &str = "grant_management_query";
    /// Revoke one's grants (FAPI Grant Management).
    pub const GRANT_MANAGEMENT_REVOKE: &str = "grant_management_revoke";
}

/// Whether a client may act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientStatus {
    /// May authenticate and use its tokens.
    Active,
    /// Refused everywhere.
    Suspended,
}

impl ClientStatus {
    /// Database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientStatus::Active => "active",
            ClientStatus::Suspended => "suspended",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(ClientStatus::Active),
            "suspended" => Ok(ClientStatus::Suspended),
            other => Err(Error::internal(format!("unknown client status {other:?}"))),
        }
    }
}

/// A registered OAuth client.
#[derive(Debug, Clone)]
pub struct Client {
    /// client_id.
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The issuing unit it acts for (issuers only).
    pub issuer_id: Option<String>,
    /// Keyed digest of its secret (client_secret_basic).
    pub secret_digest: Option<Vec<u8>>,
    /// Its public keys (private_key_jwt), a JWKS document.
    pub jwks: Option<String>,
    /// Where it publishes its keys; `jwks` is refreshed from there.
    pub jwks_uri: Option<String>,
    /// Status.
    pub status: ClientStatus,
    /// The secret replaced by the last rotation and until when (unix seconds) it still works.
    pub previous_secret: Option<(Vec<u8>, i64)>,
}

/// RFC 6749 §5.2 error codes (and RFC 6750 for bearer tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorCode {
    /// Malformed request.
    InvalidRequest,
    /// Client authentication failed.
    InvalidClient,
    /// The grant is invalid.
    InvalidGrant,
    /// The client may not use this grant type.
    UnauthorizedClient,
    /// Grant type not supported.
    UnsupportedGrantType,
    /// Scope not allowed.
    InvalidScope,
    /// The server failed.
    ServerError,
    /// The server is temporarily unavailable.
    TemporarilyUnavailable,
    /// RFC 9396: the authorization details are invalid or not allowed.
    InvalidAuthorizationDetails,
    /// RFC 9449: the DPoP proof is missing or invalid.
    InvalidDpopProof,
    /// The holder (or the rules) refused.
    AccessDenied,
    /// CIBA: the holder has not decided yet.
    AuthorizationPending,
    /// CIBA: polling too fast.
    SlowDown,
    /// CIBA: the request expired.
    ExpiredToken,
    /// CIBA: the hint names no known holder.
    UnknownUserId,
    /// RFC 9126: the request_uri is unknown, used or expired.
    InvalidRequestUri,
}

impl OAuthErrorCode {
    /// Wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::InvalidAuthorizationDetails => "invalid_authorization_details",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::AccessDenied => "access_denied",
            Self::AuthorizationPending => "authorization_pending",
            Self::SlowDown => "slow_down",
            Self::ExpiredToken => "expired_token",
            Self::UnknownUserId => "unknown_user_id",
            Self::InvalidRequestUri => "invalid_request_uri",
        }
    }
}

/// An OAuth error response (RFC 6749 §5.2).
#[derive(Debug, Clone)]
pub struct OAuthError {
    /// Error code.
    pub code: OAuthErrorCode,
    /// Human-readable description.
    pub description: String,
    /// Whether the client tried HTTP Basic (then 401 carries a Basic challenge).
    pub basic_challenge: bool,
    /// Set when rate-limited: seconds before retrying (429).
    pub retry_after: Option<u64>,
}

impl OAuthError {
    /// An error with a description.
    pub fn new(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        OAuthError {
            code,
            description: description.into(),
            basic_challenge: false,
            retry_after: None,
        }
    }

    /// Too many requests: 429 with `temporarily_unavailable` and `Retry-After`.
    pub fn rate_limited(retry_after: u64) -> Self {
        OAuthError {
            code: OAuthErrorCode::TemporarilyUnavailable,
            description: format!("too many requests; retry after {retry_after} s"),
            basic_challenge: false,
            retry_after: Some(retry_after),
        }
    }
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        let status = e.status();
        if status.is_server_error() {
            tracing::error!(error = %e, "token endpoint failure");
        }
        match status.as_u16() {
            503 => OAuthError::new(
                OAuthErrorCode::TemporarilyUnavailable,
                "the service is unavailable; retry later",
            ),
            500..=599 => OAuthError::new(OAuthErrorCode::ServerError, "an internal error occurred"),
            _ => OAuthError::new(OAuthErrorCode::InvalidRequest, e.to_string()),
        }
    }
}

/// RFC 6749 error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// Error code.
    pub error: String,
    /// Description.
    pub error_description: String,
}

impl axum::response::IntoResponse for OAuthError {
    fn into_response(self) -> axum::response::Response {
        use axum::http::{header, HeaderValue, StatusCode};
        let status = match self.code {
            _ if self.retry_after.is_some() => StatusCode::TOO_MANY_REQUESTS,
            OAuthErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
            OAuthErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            OAuthErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        let note =
            crate::error::RefusalNote(format!("{}: {}", self.code.as_str(), self.description));
        let body = OAuthErrorBody {
            error: self.code.as_str().to_owned(),
            error_description: self.description,
        };
        let mut res = (status, axum::Json(body)).into_response();
        res.extensions_mut().insert(note);
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            let challenge = if self.basic_challenge {
                "Basic realm=\"licensegate\""
            } else {
                "Bearer realm=\"licensegate\""
            };
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        res
    }
}
