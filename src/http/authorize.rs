//! The consent flows over HTTP: pushed authorization requests (RFC 9126),
//! the authorization endpoint with the holder's login and consent page,
//! backchannel authentication (CIBA), and the holder's own pages (pending
//! requests, consents, showing a license). See `oauth::flows` for the flows.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::context::ActorSlot;
use crate::app::AppState;
use crate::audit::{Actor, ActorKind};
use crate::consent::{Choice, ConsentView};
use crate::error::{Error, Result};
use crate::oauth::flows::{self, Backchannel, Pushed};
use crate::oauth::OAuthErrorBody;
use crate::web::{
    cookie, csrf_ok, csrf_token, field, form_fields, origin, pages, safe_next, see_other,
    set_cookie, Lang, Page, PreSession, LANG_COOKIE, PRE_SESSION_COOKIE, SESSION_COOKIE,
};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(par))
        .routes(routes!(bc_authorize))
        .routes(routes!(authorize))
        .routes(routes!(login_page, login))
        .routes(routes!(logout))
        .routes(routes!(decision))
        .routes(routes!(requests_page))
        .routes(routes!(decide_request))
        .routes(routes!(show_page, show))
        .routes(routes!(consents_page))
        .routes(routes!(revoke_form))
        .routes(routes!(my_consents))
        .routes(routes!(revoke_api))
        .routes(routes!(access_history))
}

pub(crate) type Slot = Option<axum::Extension<ActorSlot>>;

/// Pushed authorization request (RFC 9126).
///
/// The entity authenticates (`private_key_jwt` with `aud` = the issuer, or
/// `client_secret_basic`) and pushes `response_type=code`, `redirect_uri`
/// (exactly as registered), `code_challenge` with `code_challenge_method=S256`,
/// optional `state`, and `authorization_details` (RFC 9396, type
/// `license_access`), which are checked against its use list and the policies
/// now. The `request_uri` is single use and lives 90 seconds.
#[utoipa::path(
    post, path = "/par", tag = "oauth",
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 201, description = "Request stored", body = Pushed),
        (status = 400, description = "Invalid request", body = OAuthErrorBody),
        (status = 401, description = "Client authentication failed", body = OAuthErrorBody),
    ),
    security((), ("client_secret_basic" = []))
)]
async fn par(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (params, authorization) = super::oauth::form_request(&slot, &headers, &body)?;
        flows::push(&state, authorization, &params).await
    }
    .await;
    match result {
        Ok(p) => super::oauth::no_store((StatusCode::CREATED, Json(p)).into_response()),
        Err(e) => e.into_response(),
    }
}

/// Backchannel authentication request (OpenID CIBA, poll mode).
///
/// `login_hint` is the holder's identifier, `binding_message` is shown both
/// at the entity's counter and on the holder's page, and
/// `authorization_details` says what is asked. Poll `/token` with
/// `grant_type=urn:openid:params:grant-type:ciba` and the `auth_req_id`.
#[utoipa::path(
    post, path = "/bc-authorize", tag = "oauth",
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Request accepted", body = Backchannel),
        (status = 400, description = "Invalid request or unknown holder", body = OAuthErrorBody),
        (status = 401, description = "Client authentication failed", body = OAuthErrorBody),
    ),
    security((), ("client_secret_basic" = []))
)]
async fn bc_authorize(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (params, authorization) = super::oauth::form_request(&slot, &headers, &body)?;
        flows::backchannel(&state, authorization, &params).await
    }
    .await;
    match result {
        Ok(b) => super::oauth::no_store(Json(b).into_response()),
        Err(e) => e.into_response(),
    }
}

/// The logged-in holder of a request, from the session cookie.
pub(crate) struct Session {
    pub(crate) holder_id: String,
    pub(crate) id: String,
}

/// The holder of a JSON API call: a live session, and for changes the
/// `x-csrf-token` header matching it.
pub(crate) async fn api_session(
    state: &AppState,
    headers: &HeaderMap,
    slot: &Slot,
    change: bool,
) -> Result<Session> {
    let s = session(state, headers, slot)
        .await?
        .ok_or_else(|| Error::Unauthorized("log in first".into()))?;
    if change {
        let token = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !csrf_ok(&state.sealer, &s.id, token) {
            return Err(Error::Forbidden("x-csrf-token is missing or wrong".into()));
        }
    }
    Ok(s)
}

async fn session(state: &AppState, headers: &HeaderMap, slot: &Slot) -> Result<Option<Session>> {
    let Some(id) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let holder = crate::holders::session_holder(state, id).await?;
    Ok(holder.map(|holder_id| {
        if let Some(slot) = slot {
            slot.set(Actor {
                kind: ActorKind::Holder,
                id: holder_id.clone(),
            });
        }
        Session {
            holder_id,
            id: id.to_owned(),
        }
    }))
}

/// A page, or a redirect to login when there is no session.
async fn require_session(
    state: &AppState,
    headers: &HeaderMap,
    slot: &Slot,
    here: &str,
) -> Result<std::result::Result<Session, Response>> {
    Ok(match session(state, headers, slot).await? {
        Some(s) => Ok(s),
        None => Err(see_other(
            &format!(
                "/login?next={}",
                form_urlencoded::byte_serialize(here.as_bytes()).collect::<String>()
            ),
            &[],
        )),
    })
}

/// A holder page: the session (or a redirect to login), the language, and
/// errors rendered as pages.
pub(crate) async fn holder_page<F, Fut>(
    state: &AppState,
    slot: &Slot,
    headers: &HeaderMap,
    lang_param: Option<&str>,
    here: &str,
    render: F,
) -> Response
where
    F: FnOnce(AppState, Session, Lang) -> Fut,
    Fut: std::future::Future<Output = Result<Response>>,
{
    let lang = Lang::pick(lang_param, headers);
    let result = async {
        match require_session(state, headers, slot, here).await? {
            Ok(s) => render(state.clone(), s, lang).await,
            Err(to_login) => Ok(to_login),
        }
    }
    .await;
    with_lang_cookie(lang_param, result.unwrap_or_else(|e| page_error(lang, e)))
}

/// A holder's form post: a live session and its CSRF token are required.
pub(crate) async fn holder_form<F, Fut>(
    state: &AppState,
    slot: &Slot,
    headers: &HeaderMap,
    body: &[u8],
    act: F,
) -> Response
where
    F: FnOnce(AppState, Session, Vec<(String, String)>, Lang) -> Fut,
    Fut: std::future::Future<Output = Result<Response>>,
{
    let f = form_fields(body);
    let lang = Lang::pick(field(&f, "lang"), headers);
    let result = async {
        let s = session(state, headers, slot).await?.ok_or_else(|| {
            Error::Unauthorized(
                lang.t(
                    "登录已过期，请重新登录。",
                    "Your session has ended; please log in again.",
                )
                .into(),
            )
        })?;
        check_csrf(state, &s, &f, lang)?;
        act(state.clone(), s, f, lang).await
    }
    .await;
    result.unwrap_or_else(|e| page_error(lang, e))
}

/// An error as a page (never a redirect); server faults are logged and
/// shown without their cause; refusals carry their note for the audit record.
pub(crate) fn page_error(lang: Lang, e: Error) -> Response {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(error = %e, "page failure");
        return Page::error(
            lang,
            status,
            lang.t(
                "服务暂时不可用，请稍后再试。",
                "The service failed; please try again later.",
            ),
        )
        .into_response();
    }
    let mut res = Page::error(lang, status, &e.to_string()).into_response();
    res.extensions_mut()
        .insert(crate::error::RefusalNote(e.to_string()));
    res
}

/// Parameters of the authorization endpoint.
#[derive(Deserialize, IntoParams)]
struct AuthorizeQuery {
    /// The entity.
    client_id: Option<String>,
    /// From the pushed request.
    request_uri: Option<String>,
    /// zh (default) or en.
    lang: Option<String>,
}

/// Authorization endpoint (RFC 6749 §3.1, with PAR only).
///
/// Shows the holder the login form, then the consent page. Errors (unknown,
/// expired or used `request_uri`, wrong `client_id`) are shown, never redirected.
#[utoipa::path(
    get, path = "/authorize", tag = "holder", params(AuthorizeQuery),
    responses(
        (status = 200, description = "Consent page", content_type = "text/html"),
        (status = 303, description = "To the login page"),
        (status = 400, description = "Error page", content_type = "text/html"),
    )
)]
async fn authorize(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    Query(q): Query<AuthorizeQuery>,
) -> Response {
    let lang = Lang::pick(q.lang.as_deref(), &headers);
    let result = async {
        let (Some(client_id), Some(request_uri)) = (q.client_id.as_deref(), q.request_uri.as_deref()) else {
            return Err(Error::BadRequest(
                "client_id and request_uri are required; authorization requests must be pushed first (PAR)".into(),
            ));
        };
        let s = session(&state, &headers, &slot).await?;
        let row = flows::open(&state, client_id, request_uri, s.as_ref().map(|s| s.holder_id.as_str())).await?;
        let Some(s) = s else {
            let here = format!(
                "/authorize?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("client_id", client_id)
                    .append_pair("request_uri", request_uri)
                    .finish()
            );
            return Ok(see_other(
                &format!(
                    "/login?next={}",
                    form_urlencoded::byte_serialize(here.as_bytes()).collect::<String>()
                ),
                &[],
            ));
        };
        let redirect_origin = row.redirect_uri.as_deref().and_then(origin);
        let prompt = flows::prompt(&state, row, &s.holder_id).await?;
        let mut e = crate::audit::AuditEvent::new(
            ActorKind::Holder,
            &s.holder_id,
            "consent.shown",
            crate::audit::Outcome::Success,
        )
        .holder(&s.holder_id)
        .purpose(&prompt.terms.purpose)
        .reason(format!(
            "entity={} request {}",
            prompt.entity.id, prompt.request.public_id
        ));
        e.license_type = prompt.terms.elements.first().map(|a| a.license_type.clone());
        state.audit.record(e).await?;
        let csrf = csrf_token(&state.sealer, &s.id);
        let mut page = Page::new(
            lang,
            lang.t("授权确认", "Consent"),
            pages::consent_page(lang, &prompt, &csrf, request_uri),
        );
        page.form_targets.extend(redirect_origin);
        Ok(page.into_response())
    }
    .await;
    with_lang_cookie(
        q.lang.as_deref(),
        result.unwrap_or_else(|e| page_error(lang, e)),
    )
}

fn with_lang_cookie(param: Option<&str>, mut res: Response) -> Response {
    if let Some(l @ ("zh" | "en")) = param {
        res.headers_mut().append(
            axum::http::header::SET_COOKIE,
            set_cookie(LANG_COOKIE, l, 365 * 86400),
        );
    }
    res
}

/// Parameters of the login page.
#[derive(Deserialize, IntoParams)]
struct LoginQuery {
    /// Where to go after login (a path on this server).
    next: Option<String>,
    /// zh (default) or en.
    lang: Option<String>,
}

/// The holder's login form.
#[utoipa::path(
    get, path = "/login", tag = "holder", params(LoginQuery),
    responses((status = 200, description = "Login form", content_type = "text/html"))
)]
async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let lang = Lang::pick(q.lang.as_deref(), &headers);
    let result = login_form(
        &state,
        &headers,
        lang,
        &safe_next(q.next.as_deref()),
        None,
        StatusCode::OK,
    );
    with_lang_cookie(
        q.lang.as_deref(),
        result.unwrap_or_else(|e| page_error(lang, e)),
    )
}

fn login_form(
    state: &AppState,
    headers: &HeaderMap,
    lang: Lang,
    next: &str,
    message: Option<&str>,
    status: StatusCode,
) -> Result<Response> {
    let pre = PreSession::of(headers)?;
    let csrf = csrf_token(&state.sealer, &pre.id);
    let mut page = Page::new(
        lang,
        lang.t("登录", "Log in"),
        pages::login(lang, &csrf, next, message),
    );
    page.status = status;
    Ok(pre.attach(page.into_response()))
}

/// Logs a holder in (form post with CSRF token); starts a fresh session.
#[utoipa::path(
    post, path = "/login", tag = "holder",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "identifier, password, csrf, next"),
    responses(
        (status = 303, description = "Logged in: to `next`"),
        (status = 401, description = "Wrong identifier or password", content_type = "text/html"),
        (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html"),
        (status = 429, description = "Locked after repeated failures", content_type = "text/html"),
    )
)]
async fn login(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form_fields(&body);
    let lang = Lang::pick(field(&f, "lang"), &headers);
    let next = safe_next(field(&f, "next"));
    let result = async {
        let pre = cookie(&headers, PRE_SESSION_COOKIE).unwrap_or_default();
        if pre.is_empty() || !csrf_ok(&state.sealer, pre, field(&f, "csrf").unwrap_or_default()) {
            return Err(Error::Forbidden(
                lang.t(
                    "表单已失效，请重新登录。",
                    "The form has expired or is not valid; please log in again.",
                )
                .into(),
            ));
        }
        let identifier = field(&f, "identifier").unwrap_or_default().trim();
        let password = field(&f, "password").unwrap_or_default();
        if identifier.is_empty()
            || password.is_empty()
            || identifier.len() > 64
            || password.len() > 256
        {
            return login_form(
                &state,
                &headers,
                lang,
                &next,
                Some(lang.t(
                    "请输入证件号码和密码。",
                    "Enter your ID number and password.",
                )),
                StatusCode::BAD_REQUEST,
            );
        }
        match crate::holders::login(&state, identifier, password).await? {
            Ok(holder_id) => {
                let sid = crate::holders::start_session(&state, &holder_id).await?;
                Ok(see_other(
                    &next,
                    &[
                        set_cookie(SESSION_COOKIE, &sid, crate::holders::SESSION_SECONDS),
                        set_cookie(PRE_SESSION_COOKIE, "", 0),
                    ],
                ))
            }
            Err(crate::holders::LoginFailure::Invalid) => {
                let mut res = login_form(
                    &state,
                    &headers,
                    lang,
                    &next,
                    Some(lang.t("证件号码或密码错误。", "Wrong ID number or password.")),
                    StatusCode::UNAUTHORIZED,
                )?;
                res.extensions_mut()
                    .insert(crate::error::RefusalNote("login failed".into()));
                Ok(res)
            }
            Err(crate::holders::LoginFailure::Locked(secs)) => {
                let msg = lang
                    .t(
                        "登录失败次数过多，请{m}分钟后再试。",
                        "Too many failed attempts; try again in {m} minutes.",
                    )
                    .replace("{m}", &((secs + 59) / 60).to_string());
                let mut res = login_form(
                    &state,
                    &headers,
                    lang,
                    &next,
                    Some(&msg),
                    StatusCode::TOO_MANY_REQUESTS,
                )?;
                if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                    res.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
                }
                Ok(res)
            }
        }
    }
    .await;
    result.unwrap_or_else(|e| page_error(lang, e))
}

/// Ends the holder's session (form post with CSRF token).
#[utoipa::path(
    post, path = "/logout", tag = "holder",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "csrf"),
    responses((status = 303, description = "Logged out"))
)]
async fn logout(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form_fields(&body);
    let lang = Lang::pick(field(&f, "lang"), &headers);
    let result = async {
        if let Some(s) = session(&state, &headers, &slot).await? {
            check_csrf(&state, &s, &f, lang)?;
            crate::holders::end_session(&state, &s.id).await?;
        }
        Ok(see_other("/login", &[set_cookie(SESSION_COOKIE, "", 0)]))
    }
    .await;
    result.unwrap_or_else(|e| page_error(lang, e))
}

fn check_csrf(state: &AppState, s: &Session, f: &[(String, String)], lang: Lang) -> Result<()> {
    if csrf_ok(&state.sealer, &s.id, field(f, "csrf").unwrap_or_default()) {
        Ok(())
    } else {
        Err(Error::Forbidden(
            lang.t("表单已失效或来源不明，请刷新页面后重试。", "The form has expired or did not come from this site; reload the page and try again.").into(),
        ))
    }
}

fn choice_of(f: &[(String, String)]) -> Choice {
    Choice {
        optional: f
            .iter()
            .filter(|(k, _)| k == "optional")
            .map(|(_, v)| v.clone())
            .collect(),
    }
}

fn decision_of(f: &[(String, String)]) -> Result<bool> {
    match field(f, "decision") {
        Some("approve") => Ok(true),
        Some("refuse") => Ok(false),
        _ => Err(Error::BadRequest(
            "decision must be approve or refuse".into(),
        )),
    }
}

/// The holder's decision on the consent page (form post with CSRF token):
/// a 303 redirect to the entity with `code` (or `error=access_denied`),
/// `state` and `iss`.
#[utoipa::path(
    post, path = "/authorize/decision", tag = "holder",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "request_uri, csrf, decision=approve|refuse, optional=TYPE.field…"),
    responses(
        (status = 303, description = "Back to the entity"),
        (status = 400, description = "Error page", content_type = "text/html"),
        (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html"),
    )
)]
async fn decision(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    holder_form(
        &state,
        &slot,
        &headers,
        &body,
        |state, s, f, _| async move {
            let approve = decision_of(&f)?;
            let request_uri = field(&f, "request_uri").unwrap_or_default();
            let location =
                flows::decide_redirect(&state, &s.holder_id, request_uri, approve, &choice_of(&f))
                    .await?;
            Ok(see_other(&location, &[]))
        },
    )
    .await
}

/// Language parameter of the holder pages.
#[derive(Deserialize, IntoParams)]
pub(crate) struct LangQuery {
    /// zh (default) or en.
    pub(crate) lang: Option<String>,
}

/// The holder's pending backchannel requests, to approve or refuse.
#[utoipa::path(
    get, path = "/holder/requests", tag = "holder", params(LangQuery),
    responses(
        (status = 200, description = "Pending requests", content_type = "text/html"),
        (status = 303, description = "To the login page"),
    )
)]
async fn requests_page(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    Query(q): Query<LangQuery>,
) -> Response {
    holder_page(
        &state,
        &slot,
        &headers,
        q.lang.as_deref(),
        "/holder/requests",
        |state, s, lang| async move {
            let pending = flows::pending(&state, &s.holder_id).await?;
            let csrf = csrf_token(&state.sealer, &s.id);
            Ok(Page::new(
                lang,
                lang.t("待处理请求", "Pending requests"),
                pages::requests_page(lang, &pending, &csrf, None),
            )
            .into_response())
        },
    )
    .await
}

/// Approves or refuses one backchannel request (form post with CSRF token).
#[utoipa::path(
    post, path = "/holder/requests/{id}", tag = "holder",
    params(("id" = String, Path, description = "The request's public id")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "csrf, decision=approve|refuse, optional=TYPE.field…"),
    responses(
        (status = 200, description = "Decided; the remaining requests", content_type = "text/html"),
        (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html"),
        (status = 404, description = "No such pending request", content_type = "text/html"),
    )
)]
async fn decide_request(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    holder_form(
        &state,
        &slot,
        &headers,
        &body,
        |state, s, f, lang| async move {
            let approve = decision_of(&f)?;
            flows::decide_backchannel(&state, &s.holder_id, &id, approve, &choice_of(&f)).await?;
            let pending = flows::pending(&state, &s.holder_id).await?;
            let csrf = csrf_token(&state.sealer, &s.id);
            let notice = if approve {
                lang.t("已同意授权。", "Approved.")
            } else {
                lang.t("已拒绝。", "Refused.")
            };
            Ok(Page::new(
                lang,
                lang.t("待处理请求", "Pending requests"),
                pages::requests_page(lang, &pending, &csrf, Some(notice)),
            )
            .into_response())
        },
    )
    .await
}

/// The form to show a license (亮证).
#[utoipa::path(
    get, path = "/holder/show", tag = "holder", params(LangQuery),
    responses(
        (status = 200, description = "The holder's licenses to pick from", content_type = "text/html"),
        (status = 303, description = "To the login page"),
    )
)]
async fn show_page(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    Query(q): Query<LangQuery>,
) -> Response {
    holder_page(
        &state,
        &slot,
        &headers,
        q.lang.as_deref(),
        "/holder/show",
        |state, s, lang| async move {
            let mut licenses = Vec::new();
            for (l, identifier) in state.library.holder_licenses(&s.holder_id).await? {
                if l.status != "cancelled" {
                    licenses.push((
                        identifier,
                        state.library.license_type(&l.license_type).await?,
                    ));
                }
            }
            let csrf = csrf_token(&state.sealer, &s.id);
            Ok(Page::new(
                lang,
                lang.t("亮证", "Show a license"),
                pages::show_form(lang, &licenses, &csrf),
            )
            .into_response())
        },
    )
    .await
}

/// Makes a one-time code for one license and the chosen fields (form post with CSRF token).
#[utoipa::path(
    post, path = "/holder/show", tag = "holder",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "csrf, identifier, field…"),
    responses(
        (status = 200, description = "The code and its QR payload", content_type = "text/html"),
        (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html"),
    )
)]
async fn show(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    holder_form(
        &state,
        &slot,
        &headers,
        &body,
        |state, s, f, lang| async move {
            let fields: Vec<String> = f
                .iter()
                .filter(|(k, _)| k == "field")
                .map(|(_, v)| v.clone())
                .collect();
            let shown = flows::show(
                &state,
                &s.holder_id,
                field(&f, "identifier").unwrap_or_default(),
                &fields,
            )
            .await?;
            Ok(Page::new(
                lang,
                lang.t("亮证授权码", "Your code"),
                pages::shown(lang, &shown, &csrf_token(&state.sealer, &s.id)),
            )
            .into_response())
        },
    )
    .await
}

/// The holder's consents, each with a revoke button.
#[utoipa::path(
    get, path = "/holder/consents", tag = "holder", params(LangQuery),
    responses(
        (status = 200, description = "My consents", content_type = "text/html"),
        (status = 303, description = "To the login page"),
    )
)]
async fn consents_page(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    Query(q): Query<LangQuery>,
) -> Response {
    holder_page(
        &state,
        &slot,
        &headers,
        q.lang.as_deref(),
        "/holder/consents",
        |state, s, lang| async move {
            let views = holder_consents(&state, &s.holder_id).await?;
            let mut names = std::collections::HashMap::new();
            for v in &views {
                if !names.contains_key(&v.entity) {
                    if let Some(e) = state.store.entity(&v.entity).await? {
                        names.insert(v.entity.clone(), e.name);
                    }
                }
            }
            let csrf = csrf_token(&state.sealer, &s.id);
            Ok(Page::new(
                lang,
                lang.t("我的授权", "My consents"),
                pages::consents_page(lang, &views, &names, &csrf),
            )
            .into_response())
        },
    )
    .await
}

async fn holder_consents(state: &AppState, holder_id: &str) -> Result<Vec<ConsentView>> {
    state
        .store
        .holder_consents(holder_id)
        .await?
        .iter()
        .map(ConsentView::of)
        .collect()
}

/// Revokes one of the holder's consents (form post with CSRF token); effective at once.
#[utoipa::path(
    post, path = "/holder/consents/{id}/revoke", tag = "holder",
    params(("id" = String, Path, description = "Consent id")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "csrf"),
    responses(
        (status = 303, description = "Revoked; back to the list"),
        (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html"),
        (status = 404, description = "Not the holder's consent", content_type = "text/html"),
    )
)]
async fn revoke_form(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    holder_form(
        &state,
        &slot,
        &headers,
        &body,
        |state, s, _, _| async move {
            crate::consent::revoke(
                &state,
                &id,
                ActorKind::Holder,
                &s.holder_id,
                "revoked by the holder",
            )
            .await?;
            Ok(see_other("/holder/consents", &[]))
        },
    )
    .await
}

/// A consent with the holder's signed receipt.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ConsentWithReceipt {
    #[serde(flatten)]
    consent: ConsentView,
    /// The broker-signed consent receipt (JWS, `typ` consent-receipt+jwt).
    receipt: String,
}

/// The holder's consents as JSON, each with its signed receipt (session cookie).
#[utoipa::path(
    get, path = "/holder/v1/consents", tag = "holder",
    responses(
        (status = 200, description = "My consents", body = [ConsentWithReceipt]),
        (status = 401, description = "Not logged in", body = crate::error::Problem),
    )
)]
async fn my_consents(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
) -> Result<Json<Vec<ConsentWithReceipt>>> {
    let s = api_session(&state, &headers, &slot, false).await?;
    let rows = state.store.holder_consents(&s.holder_id).await?;
    let mut out = Vec::with_capacity(rows.len());
    for c in &rows {
        out.push(ConsentWithReceipt {
            consent: ConsentView::of(c)?,
            receipt: crate::consent::receipt(&state, c).await?,
        });
    }
    Ok(Json(out))
}

/// Revokes a consent (session cookie and the `x-csrf-token` header); every
/// token derived from it fails on its next use.
#[utoipa::path(
    post, path = "/holder/v1/consents/{id}/revoke", tag = "holder",
    params(("id" = String, Path, description = "Consent id")),
    responses(
        (status = 200, description = "The consent, now revoked", body = ConsentView),
        (status = 401, description = "Not logged in", body = crate::error::Problem),
        (status = 403, description = "Missing or wrong CSRF token", body = crate::error::Problem),
        (status = 404, description = "Not the holder's consent", body = crate::error::Problem),
    )
)]
async fn revoke_api(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ConsentView>> {
    let s = api_session(&state, &headers, &slot, true).await?;
    let c = crate::consent::revoke(
        &state,
        &id,
        ActorKind::Holder,
        &s.holder_id,
        "revoked by the holder",
    )
    .await?;
    Ok(Json(ConsentView::of(&c)?))
}

/// One read of the holder's licenses, as the holder sees it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct AccessEntry {
    /// When (RFC 3339).
    pub(crate) time: String,
    /// license.retrieved or license.verified.
    pub(crate) action: String,
    /// The entity.
    pub(crate) entity: String,
    /// The license.
    pub(crate) license: Option<String>,
    /// Its type.
    pub(crate) license_type: Option<String>,
    /// Purpose.
    pub(crate) purpose: Option<String>,
    /// The consent it was read under.
    pub(crate) consent: Option<String>,
    /// Which fields (and, for verifications, the verdict).
    pub(crate) detail: Option<String>,
    /// Audit sequence number.
    pub(crate) seq: i64,
}

/// Who read the holder's licenses: every retrieval and verification, newest
/// first (session cookie).
#[utoipa::path(
    get, path = "/holder/v1/access-history", tag = "holder",
    responses(
        (status = 200, description = "Reads of my licenses", body = [AccessEntry]),
        (status = 401, description = "Not logged in", body = crate::error::Problem),
    )
)]
async fn access_history(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
) -> Result<Json<Vec<AccessEntry>>> {
    let s = api_session(&state, &headers, &slot, false).await?;
    Ok(Json(access_entries(&state, &s.holder_id).await?))
}

/// Every retrieval and verification of a holder's licenses, newest first
/// (the last 1000 of them).
pub(crate) async fn access_entries(state: &AppState, holder_id: &str) -> Result<Vec<AccessEntry>> {
    const SHOWN: usize = 1000;
    let mut records = Vec::with_capacity(SHOWN);
    for action in ["license.retrieved", "license.verified"] {
        let filter = crate::store::audit::AuditFilter {
            holder: Some(holder_id.to_owned()),
            action: Some(action.to_owned()),
            newest_first: true,
            ..Default::default()
        };
        records.extend(state.store.audit_records(&filter, SHOWN as i64).await?);
    }
    records.sort_unstable_by_key(|r| std::cmp::Reverse(r.seq));
    records.truncate(SHOWN);
    Ok(records
        .into_iter()
        .map(|r| AccessEntry {
            time: r.time,
            action: r.action,
            entity: r.actor_id,
            license: r.license,
            license_type: r.license_type,
            purpose: r.purpose,
            consent: r.consent,
            detail: r.reason,
            seq: r.seq,
        })
        .collect())
}
