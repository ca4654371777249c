//! OAuth endpoints: token (RFC 6749 §3.2), JWKS and server metadata (RFC 8414).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::audit::{Actor, ActorKind};
use crate::error::Result;
use crate::keys::BROKER;
use crate::oauth::client_auth::claimed_client;
use crate::oauth::tokens::{parse_form, token_request, TokenResponse};
use crate::oauth::{OAuthError, OAuthErrorBody, OAuthErrorCode};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(token))
        .routes(routes!(introspect))
        .routes(routes!(revoke))
        .routes(routes!(jwks))
        .routes(routes!(metadata))
}

/// Form parameters of a token request (documentation only).
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // parsed by hand to detect repeated parameters
struct TokenForm {
    /// `client_credentials`.
    grant_type: String,
    /// Space-separated scopes; all the client may have when omitted.
    scope: Option<String>,
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer` for private_key_jwt.
    client_assertion_type: Option<String>,
    /// The signed client assertion (private_key_jwt).
    client_assertion: Option<String>,
    /// Optional; must match the authenticated client.
    client_id: Option<String>,
}

/// Token endpoint.
///
/// Clients authenticate with `client_secret_basic` (HTTP Basic) or
/// `private_key_jwt` (RFC 7523 assertion, `aud` = the issuer). Errors are
/// RFC 6749 §5.2 bodies.
#[utoipa::path(
    post, path = "/token", tag = "oauth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Token issued", body = TokenResponse),
        (status = 400, description = "Invalid request", body = OAuthErrorBody),
        (status = 401, description = "Client authentication failed", body = OAuthErrorBody),
    ),
    security((), ("client_secret_basic" = []))
)]
async fn token(
    State(state): State<AppState>,
    slot: Option<axum::Extension<super::context::ActorSlot>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (params, authorization) = form_request(&slot, &headers, &body)?;
        let dpop = headers.get("dpop").and_then(|v| v.to_str().ok());
        token_request(&state, authorization, dpop, &params).await
    }
    .await;
    match result {
        Ok(t) => no_store(Json(t).into_response()),
        Err(e) => e.into_response(),
    }
}

/// Parses a form request and authenticates its client, as the token endpoint does.
/// The common start of every OAuth endpoint: a form body (parameters given
/// once), the Authorization header, and the client it claims to be recorded
/// as the request's actor (so that a refusal names it).
pub(crate) fn form_request<'h>(
    slot: &Option<axum::Extension<super::context::ActorSlot>>,
    headers: &'h HeaderMap,
    body: &[u8],
) -> Result<(std::collections::HashMap<String, String>, Option<&'h str>), OAuthError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidRequest,
            "the request must be application/x-www-form-urlencoded",
        ));
    }
    let params = parse_form(body)?;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let (Some(slot), Some(id)) = (slot, claimed_client(authorization, &params)) {
        slot.set(Actor {
            kind: ActorKind::Anonymous,
            id,
        });
    }
    Ok((params, authorization))
}

/// A form request from an authenticated, active client (introspection, revocation).
async fn authenticated(
    state: &AppState,
    slot: &Option<axum::Extension<super::context::ActorSlot>>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<
    (
        crate::oauth::Client,
        std::collections::HashMap<String, String>,
    ),
    OAuthError,
> {
    let (params, authorization) = form_request(slot, headers, body)?;
    let client = state
        .clients
        .authenticate_active(authorization, &params)
        .await?;
    Ok((client, params))
}

pub(crate) fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

/// Token introspection (RFC 7662). Clients see their own tokens; operators and
/// regulators any. Invalid, expired and revoked tokens are `active: false`.
#[utoipa::path(
    post, path = "/introspect", tag = "oauth",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "token=…"),
    responses(
        (status = 200, description = "Introspection", body = crate::oauth::tokens::Introspection),
        (status = 401, description = "Client authentication failed", body = OAuthErrorBody),
    ),
    security((), ("client_secret_basic" = []))
)]
async fn introspect(
    State(state): State<AppState>,
    slot: Option<axum::Extension<super::context::ActorSlot>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (client, params) = authenticated(&state, &slot, &headers, &body).await?;
        let token = params
            .get("token")
            .ok_or_else(|| OAuthError::new(OAuthErrorCode::InvalidRequest, "token is required"))?;
        Ok::<_, OAuthError>(
            crate::oauth::tokens::introspect(&state.store, &state.tokens, &client, token).await?,
        )
    }
    .await;
    match result {
        Ok(i) => no_store(Json(i).into_response()),
        Err(e) => e.into_response(),
    }
}

/// Token revocation (RFC 7009): a client revokes a token issued to it;
/// the token fails on its next use.
#[utoipa::path(
    post, path = "/revoke", tag = "oauth",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "token=…"),
    responses(
        (status = 200, description = "Revoked (or nothing to revoke)"),
        (status = 400, description = "Not this client's token", body = OAuthErrorBody),
        (status = 401, description = "Client authentication failed", body = OAuthErrorBody),
    ),
    security((), ("client_secret_basic" = []))
)]
async fn revoke(
    State(state): State<AppState>,
    slot: Option<axum::Extension<super::context::ActorSlot>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (client, params) = authenticated(&state, &slot, &headers, &body).await?;
        let token = params
            .get("token")
            .ok_or_else(|| OAuthError::new(OAuthErrorCode::InvalidRequest, "token is required"))?;
        crate::oauth::tokens::revoke(&state.store, &state.tokens, &state.audit, &client, token)
            .await
    }
    .await;
    match result {
        Ok(()) => no_store(axum::http::StatusCode::OK.into_response()),
        Err(e) => e.into_response(),
    }
}

/// The broker's public signing keys (JWKS), including retired ones.
#[utoipa::path(get, path = "/jwks.json", tag = "oauth", responses((status = 200, description = "JWK set", body = Object)))]
async fn jwks(State(state): State<AppState>) -> Result<Json<Value>> {
    Ok(Json(state.keys.jwks(BROKER).await?))
}

/// Authorization server metadata (RFC 8414).
#[utoipa::path(
    get, path = "/.well-known/oauth-authorization-server", tag = "oauth",
    responses((status = 200, description = "Server metadata", body = Object))
)]
async fn metadata(State(state): State<AppState>) -> Json<Value> {
    let base = &state.config.public_url;
    Json(json!({
        "issuer": base,
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/jwks.json"),
        "authorization_endpoint": format!("{base}/authorize"),
        "pushed_authorization_request_endpoint": format!("{base}/par"),
        "require_pushed_authorization_requests": true,
        "request_uri_parameter_supported": true,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "authorization_response_iss_parameter_supported": true,
        "code_challenge_methods_supported": ["S256"],
        "authorization_details_types_supported": [crate::consent::DETAILS_TYPE],
        "grant_types_supported": [
            "authorization_code",
            "refresh_token",
            "client_credentials",
            crate::oauth::grants::CIBA_GRANT,
            crate::oauth::grants::SHOW_GRANT,
        ],
        "backchannel_authentication_endpoint": format!("{base}/bc-authorize"),
        "backchannel_token_delivery_modes_supported": ["poll"],
        "backchannel_user_code_parameter_supported": false,
        "dpop_signing_alg_values_supported": ["ES256", "PS256", "EdDSA"],
        "grant_management_endpoint": format!("{base}/grants"),
        "grant_management_actions_supported": ["query", "revoke"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "introspection_endpoint": format!("{base}/introspect"),
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "revocation_endpoint": format!("{base}/revoke"),
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "PS256", "EdDSA"],
        "scopes_supported": [
            "catalog:write", "clients:write", "licenses:write", "audit:read",
            "grant_management_query", "grant_management_revoke",
        ],
        "service_documentation": format!("{base}/openapi.json"),
    }))
}
