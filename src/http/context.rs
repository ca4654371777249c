//! Per-request context: a request id, the peer address and the actor, so that
//! every record a request causes names them, and every refusal is audited.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::audit::{with_request, Actor, ActorKind, Outcome, RequestMeta};
use crate::error::RefusalNote;

/// The actor of the current request, once known (set by the authentication extractors).
#[derive(Clone, Default)]
pub struct ActorSlot(Arc<Mutex<Option<Actor>>>);

impl ActorSlot {
    /// Records who is acting.
    pub fn set(&self, actor: Actor) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(actor);
        }
    }

    fn get(&self) -> Option<Actor> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// Routes whose refusals are audited: everything that takes a credential.
/// Public reads (catalog, keys, health, metrics, documentation) are not.
fn audited(path: &str) -> bool {
    [
        "/token",
        "/par",
        "/bc-authorize",
        "/authorize",
        "/login",
        "/logout",
        "/console",
        "/holder/",
        "/grants/",
        "/introspect",
        "/revoke",
        "/admin/",
        "/issuer/",
        "/audit/",
        "/api/",
        "/entities/",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

fn valid_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Middleware: sets up the request context, audits refusals, returns `x-request-id`.
pub async fn context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| valid_request_id(id))
        .map(str::to_owned)
        .unwrap_or_else(|| crate::keys::random_token(12).unwrap_or_default());
    let client_addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let slot = ActorSlot::default();
    req.extensions_mut().insert(slot.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let meta = RequestMeta {
        request_id: request_id.clone(),
        client_addr,
        refusal_recorded: Default::default(),
    };
    let mut res = with_request(meta.clone(), next.run(req)).await;
    let status = res.status();
    let already = meta
        .refusal_recorded
        .load(std::sync::atomic::Ordering::Relaxed);
    if status.is_client_error() && audited(&path) && !already {
        let actor = slot.get().unwrap_or(Actor {
            kind: ActorKind::Anonymous,
            id: "-".into(),
        });
        let detail = res
            .extensions()
            .get::<RefusalNote>()
            .map(|n| n.0.clone())
            .unwrap_or_default();
        let action = if status.as_u16() == 401 || status.as_u16() == 403 {
            "access.denied"
        } else {
            "request.refused"
        };
        let mut event = actor
            .event(action, Outcome::Refused)
            .reason(format!("{method} {path} {}: {detail}", status.as_u16()));
        event.request_id = Some(meta.request_id.clone());
        event.client_addr = meta.client_addr.clone();
        // The refusal stands whether or not it could be recorded; a failure to
        // record is an operational alarm.
        if let Err(e) = with_request(meta, state.audit.record(event)).await {
            tracing::error!(error = %e, %path, "cannot audit a refusal");
        }
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}
