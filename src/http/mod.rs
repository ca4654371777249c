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
        context::context,
    ))
    .layer(DefaultBodyLimit::max(config.max_body_bytes))
    .layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        Duration::from_secs(config.request_timeout),
    ))
    .layer(TraceLayer::new_for_http())
    .layer(CatchPanicLayer::custom(|_| {
        Error::internal("a handler panicked").into_response()
    }))
    .with_state(state)
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
