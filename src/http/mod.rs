//! HTTP: axum routers and thin handlers (parse, call a service, render).

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod authorize;
pub mod catalog;
pub mod console;
pub mod context;
pub mod entities;
pub mod grants;
pub mod holder_pages;
pub mod issuer;
pub mod notify;
pub mod oauth;
pub mod objections;
pub mod openapi;
pub mod ops;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequest};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use crate::error::Error;

/// A JSON body whose rejections render as problem details.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct ApiJson<T>(pub T);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "licensegate",
        description = "Trusted authorization access system for electronic licenses: license library, OAuth 2 consent broker and tamper-evident audit log."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "oauth", description = "OAuth 2 authorization server"),
        (name = "retrieval", description = "Entities read and verify licenses under a holder's consent"),
        (name = "holder", description = "Holders' pages and API: login, consent, pending requests, showing a license, consents"),
        (name = "catalog", description = "The license catalog and issuing units (public)"),
        (name = "admin", description = "Operator API"),
        (name = "issuer", description = "Issuing-unit API: publish and manage licenses"),
        (name = "entities", description = "Entities, use lists, policy decisions"),
        (name = "audit", description = "Tamper-evident audit log: checkpoints, proofs, search, export, verification"),
        (name = "ops", description = "Health, readiness, metrics")
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "client_secret_basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

/// The whole router with its middleware.
pub fn router(state: AppState) -> axum::Router {
    let config = &state.config;
    let (api, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(oauth::router())
        .merge(authorize::router())
        .merge(grants::router())
        .merge(api::router())
        .merge(catalog::router())
        .merge(admin::router())
        .merge(issuer::router(config.max_import_bytes))
        .merge(ops::router())
        .merge(audit::router())
        .merge(entities::router())
        .merge(objections::router())
        .merge(notify::router())
        .merge(holder_pages::router())
        .merge(console::router())
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let doc = openapi::complete(doc);
    // Every app in a process builds the same document; the first one is kept.
    let _ = ops::OPENAPI.set(doc);
    api.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::telemetry::track,
    ))
    .fallback(not_found)
    .method_not_allowed_fallback(method_not_allowed)
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        limit_by_address,
    ))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        context::context,
    ))
    .layer(DefaultBodyLimit::max(config.max_body_bytes))
    .layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        Duration::from_secs(config.request_timeout),
    ))
    .layer(axum::middleware::map_response(explain_timeout))
    .layer(axum::middleware::map_response(plain_errors_as_problems))
    .layer(TraceLayer::new_for_http())
    .layer(CatchPanicLayer::custom(|_| {
        Error::internal("a handler panicked").into_response()
    }))
    .with_state(state)
}

/// Endpoints that authenticate clients, limited per peer address before any work.
const CLIENT_ENDPOINTS: [&str; 5] = ["/token", "/par", "/bc-authorize", "/introspect", "/revoke"];

/// Per-address rate limits: client-authenticating endpoints (RFC 6749 body)
/// and the login forms (a page); 429 with `Retry-After`.
async fn limit_by_address(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue, Method};
    let Some(ip) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let login = req.method() == Method::POST && (path == "/login" || path == "/console/login");
    if login {
        if let Err(wait) = state.limits.login(ip) {
            let lang = crate::web::Lang::pick(None, req.headers());
            let secs = wait.retry_after();
            let msg = match lang {
                crate::web::Lang::Zh => format!("登录尝试过于频繁，请 {secs} 秒后再试。"),
                crate::web::Lang::En => format!("Too many login attempts; try again in {secs} s."),
            };
            let mut res =
                crate::web::Page::error(lang, StatusCode::TOO_MANY_REQUESTS, &msg).into_response();
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            res.extensions_mut()
                .insert(crate::error::RefusalNote("login rate limit".into()));
            return res;
        }
    } else if CLIENT_ENDPOINTS.contains(&path) {
        if let Err(wait) = state.limits.address(ip) {
            return crate::oauth::OAuthError::rate_limited(wait.retry_after()).into_response();
        }
    }
    next.run(req).await
}

/// Extractor rejections (a path segment that is not a number, a malformed
/// query) come as text/plain; give them the problem details body every
/// other error has.
async fn plain_errors_as_problems(res: axum::response::Response) -> axum::response::Response {
    let plain = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    let status = res.status();
    if !(plain && status.is_client_error()) {
        return res;
    }
    let detail = match axum::body::to_bytes(res.into_body(), 16 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b)
            .chars()
            .take(500)
            .collect::<String>(),
        Err(_) => String::new(),
    };
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
        serde_json::json!({
            "type": "https://licensegate.dev/problems/invalid-request",
            "title": status.canonical_reason().unwrap_or("Bad Request"),
            "status": status.as_u16(),
            "detail": detail,
        })
        .to_string(),
    )
        .into_response()
}

/// The timeout layer answers 408 with an empty body; give it a problem body.
async fn explain_timeout(res: axum::response::Response) -> axum::response::Response {
    if res.status() == StatusCode::REQUEST_TIMEOUT {
        let mut out = (
            StatusCode::REQUEST_TIMEOUT,
            [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
            serde_json::json!({
                "type": "https://licensegate.dev/problems/request-timeout",
                "title": "Request Timeout",
                "status": 408,
                "detail": "the request took too long (a slow body or a slow answer) and was cut off; nothing was changed by it unless an answer says so",
            })
            .to_string(),
        )
            .into_response();
        out.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return out;
    }
    res
}

async fn not_found() -> Error {
    Error::NotFound("no such resource".into())
}

async fn method_not_allowed() -> impl IntoResponse {
    let mut res =
        Error::BadRequest("this method is not allowed on this resource".into()).into_response();
    *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    res
}
