//! The regulators' console (server-rendered, read-only): login, audit
//! search and export, statistics, anomalies, objections, entity details.
//! Regulators log in with their own console account; the session cookie
//! is separate from holders'.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::authorize::page_error;
use crate::app::AppState;
use crate::audit::{ActorKind, AuditEvent, Outcome};
use crate::error::{Error, Result};
use crate::store::audit::AuditFilter;
use crate::web::console::{self as pages, SearchForm};
use crate::web::PreSession;
use crate::web::{
    cookie, csrf_ok, csrf_token, field, form_fields, see_other, set_cookie, Lang, Page,
    PRE_SESSION_COOKIE,
};

/// The console's session cookie.
pub const CONSOLE_COOKIE: &str = "lg_console";

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login_page, login))
        .routes(routes!(logout))
        .routes(routes!(search))
        .routes(routes!(export_view))
        .routes(routes!(stats))
        .routes(routes!(anomalies))
        .routes(routes!(objections))
        .routes(routes!(entity))
}

struct Regulator {
    username: String,
    display_name: String,
    session: String,
}

/// A console page: the regulator's session (or the login page), errors as pages.
async fn console_page<F, Fut>(
    state: &AppState,
    headers: &HeaderMap,
    lang_param: Option<&str>,
    render: F,
) -> Response
where
    F: FnOnce(AppState, Regulator, Lang) -> Fut,
    Fut: std::future::Future<Output = Result<Response>>,
{
    let lang = Lang::pick(lang_param, headers);
    let result = async {
        let Some(id) = cookie(headers, CONSOLE_COOKIE) else {
            return Ok(see_other("/console/login", &[]));
        };
        match crate::console::session(state, id).await? {
            Some((username, display_name)) => {
                render(
                    state.clone(),
                    Regulator {
                        username,
                        display_name,
                        session: id.to_owned(),
                    },
                    lang,
                )
                .await
            }
            None => Ok(see_other("/console/login", &[])),
        }
    }
    .await;
    result.unwrap_or_else(|e| page_error(lang, e))
}

fn framed(state: &AppState, r: &Regulator, lang: Lang, title: &str, body: String) -> Response {
    let csrf = csrf_token(&state.sealer, &format!("console:{}", r.session));
    let nav = pages::nav(lang, &csrf, &r.display_name);
    Page::new(lang, title, format!("{nav}{body}")).into_response()
}

#[derive(Debug, Deserialize, IntoParams)]
struct LangQuery {
    /// zh (default) or en.
    lang: Option<String>,
}

fn login_form(
    state: &AppState,
    headers: &HeaderMap,
    lang: Lang,
    message: Option<&str>,
    status: StatusCode,
) -> Result<Response> {
    let pre = PreSession::of(headers)?;
    let csrf = csrf_token(&state.sealer, &format!("console-login:{}", pre.id));
    let mut page = Page::new(
        lang,
        lang.t("监管控制台", "Regulator console"),
        pages::login(lang, &csrf, message),
    );
    page.status = status;
    Ok(pre.attach(page.into_response()))
}

/// The console login form.
#[utoipa::path(get, path = "/console/login", tag = "audit", params(LangQuery),
    responses((status = 200, description = "Login form", content_type = "text/html")))]
async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LangQuery>,
) -> Response {
    let lang = Lang::pick(q.lang.as_deref(), &headers);
    login_form(&state, &headers, lang, None, StatusCode::OK).unwrap_or_else(|e| page_error(lang, e))
}

/// Logs a regulator in (form post with CSRF token).
#[utoipa::path(post, path = "/console/login", tag = "audit",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "username, password, csrf"),
    responses((status = 303, description = "Logged in: to the console"),
              (status = 401, description = "Wrong name or password", content_type = "text/html"),
              (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html"),
              (status = 429, description = "Locked after repeated failures", content_type = "text/html")))]
async fn login(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form_fields(&body);
    let lang = Lang::pick(field(&f, "lang"), &headers);
    let result = async {
        let pre = cookie(&headers, PRE_SESSION_COOKIE).unwrap_or_default();
        if pre.is_empty()
            || !csrf_ok(
                &state.sealer,
                &format!("console-login:{pre}"),
                field(&f, "csrf").unwrap_or_default(),
            )
        {
            return Err(Error::Forbidden(
                lang.t(
                    "表单已失效，请重新登录。",
                    "The form has expired; please log in again.",
                )
                .into(),
            ));
        }
        let username = field(&f, "username").unwrap_or_default().trim().to_owned();
        match crate::console::login(&state, &username, field(&f, "password").unwrap_or_default())
            .await?
        {
            Ok(Some(session)) => Ok(see_other(
                "/console",
                &[set_cookie(
                    CONSOLE_COOKIE,
                    &session,
                    crate::holders::SESSION_SECONDS,
                )],
            )),
            Ok(None) => login_form(
                &state,
                &headers,
                lang,
                Some(lang.t("用户名或密码错误。", "Wrong username or password.")),
                StatusCode::UNAUTHORIZED,
            ),
            Err(secs) => login_form(
                &state,
                &headers,
                lang,
                Some(&match lang {
                    Lang::Zh => format!("失败次数过多，请 {secs} 秒后再试。"),
                    Lang::En => format!("Too many failures; try again in {secs} s."),
                }),
                StatusCode::TOO_MANY_REQUESTS,
            ),
        }
    }
    .await;
    result.unwrap_or_else(|e| page_error(lang, e))
}

/// Ends the console session (form post with CSRF token).
#[utoipa::path(post, path = "/console/logout", tag = "audit",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "csrf"),
    responses((status = 303, description = "Logged out")))]
async fn logout(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form_fields(&body);
    let lang = Lang::pick(field(&f, "lang"), &headers);
    let result = async {
        if let Some(id) = cookie(&headers, CONSOLE_COOKIE) {
            if !csrf_ok(
                &state.sealer,
                &format!("console:{id}"),
                field(&f, "csrf").unwrap_or_default(),
            ) {
                return Err(Error::Forbidden(
                    lang.t("表单已失效。", "The form has expired.").into(),
                ));
            }
            crate::console::logout(&state, id).await?;
        }
        Ok(see_other(
            "/console/login",
            &[set_cookie(CONSOLE_COOKIE, "", 0)],
        ))
    }
    .await;
    result.unwrap_or_else(|e| page_error(lang, e))
}

/// Audit search filters (dates are UTC days, `to` inclusive).
#[derive(Debug, Default, Deserialize, IntoParams)]
struct SearchQuery {
    /// zh (default) or en.
    lang: Option<String>,
    /// From this day (YYYY-MM-DD).
    from: Option<String>,
    /// Until this day, inclusive.
    to: Option<String>,
    /// Entity (client id).
    entity: Option<String>,
    /// Sector of the acting entity.
    sector: Option<String>,
    /// Holder's ID number or USCC.
    holder: Option<String>,
    /// License type code.
    license_type: Option<String>,
    /// License identifier.
    license: Option<String>,
    /// Action.
    action: Option<String>,
    /// success or refused.
    outcome: Option<String>,
    /// Cursor: records after this sequence number.
    after: Option<i64>,
    /// Export format (jsonl or csv).
    format: Option<String>,
}

fn opt(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl SearchQuery {
    fn form(&self) -> SearchForm {
        let v = |o: &Option<String>| opt(o).unwrap_or_default();
        SearchForm {
            fields: vec![
                ("from", v(&self.from)),
                ("to", v(&self.to)),
                ("entity", v(&self.entity)),
                ("sector", v(&self.sector)),
                ("holder", v(&self.holder)),
                ("license_type", v(&self.license_type)),
                ("action", v(&self.action)),
                ("outcome", v(&self.outcome)),
                ("license", v(&self.license)),
            ],
        }
    }

    /// The store filter; None when the holder is unknown (nothing can match).
    async fn filter(&self, state: &AppState) -> Result<Option<AuditFilter>> {
        let day = |d: &Option<String>, end: bool| -> Result<Option<String>> {
            opt(d)
                .map(|d| {
                    let date = crate::store::parse_date(&d)?;
                    let date = if end {
                        date.next_day().unwrap_or(date)
                    } else {
                        date
                    };
                    Ok(format!(
                        "{}T00:00:00.000000Z",
                        crate::store::date_string(date)
                    ))
                })
                .transpose()
        };
        if let Some(o) = opt(&self.outcome) {
            if !matches!(o.as_str(), "success" | "refused") {
                return Err(Error::BadRequest(
                    "outcome must be success or refused".into(),
                ));
            }
        }
        let holder = match opt(&self.holder) {
            None => None,
            Some(h) => match state.library.holder_by_identifier(&h).await? {
                Some((id, _)) => Some(id),
                None => return Ok(None),
            },
        };
        Ok(Some(AuditFilter {
            from: day(&self.from, false)?,
            to: day(&self.to, true)?,
            actor: opt(&self.entity),
            holder,
            license: opt(&self.license),
            license_type: opt(&self.license_type),
            action: opt(&self.action),
            outcome: opt(&self.outcome),
            after: self.after,
            until_seq: None,
            newest_first: false,
        }))
    }
}

fn audit_event(r: &Regulator, action: &str, what: &str) -> AuditEvent {
    AuditEvent::new(ActorKind::Regulator, &r.username, action, Outcome::Success)
        .reason(format!("console {what}"))
}

const PAGE: usize = 100;

/// Searches the audit log with paging; shows the log's integrity.
#[utoipa::path(get, path = "/console", tag = "audit", params(SearchQuery),
    responses((status = 200, description = "Search page", content_type = "text/html"),
              (status = 303, description = "To the login page")))]
async fn search(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SearchQuery>,
) -> Response {
    let lang_param = q.lang.clone();
    console_page(
        &state,
        &headers,
        lang_param.as_deref(),
        |state, r, lang| async move {
            let form = q.form();
            let mut records = Vec::new();
            let mut next = None;
            if let Some(mut filter) = q.filter(&state).await? {
                let sector_ids: Option<Vec<String>> = match opt(&q.sector) {
                    None => None,
                    Some(s) => Some(
                        state
                            .store
                            .entities(None)
                            .await?
                            .into_iter()
                            .filter(|e| e.sector == s)
                            .map(|e| e.id)
                            .collect(),
                    ),
                };
                // A sector keeps only its entities' records: read further pages until one is full.
                for _ in 0..50 {
                    let page = state.store.audit_records(&filter, PAGE as i64).await?;
                    let full = page.len() == PAGE;
                    let last = page.last().map(|x| x.seq);
                    records.extend(page.into_iter().filter(|x| {
                        sector_ids
                            .as_ref()
                            .is_none_or(|ids| ids.contains(&x.actor_id))
                    }));
                    if records.len() >= PAGE || !full {
                        next = full.then_some(last).flatten();
                        break;
                    }
                    filter.after = last;
                    next = last;
                }
                if records.len() > PAGE {
                    records.truncate(PAGE);
                    next = records.last().map(|x| x.seq);
                }
            }
            state
                .audit
                .record(audit_event(&r, "audit.searched", &form.query()))
                .await?;
            let cp = state.checkpoints.latest().await?;
            let v = state.store.latest_verification().await?;
            let body = pages::search(
                lang,
                &form,
                &records,
                next,
                &pages::integrity(lang, cp.as_ref(), v.as_ref()),
            );
            Ok(framed(
                &state,
                &r,
                lang,
                lang.t("审计日志", "Audit log"),
                body,
            ))
        },
    )
    .await
}

/// Exports the filtered view: JSONL (with the checkpoints, and inclusion
/// proofs when filtered, verifiable with `licensegate audit verify --file`)
/// or CSV.
#[utoipa::path(get, path = "/console/export", tag = "audit", params(SearchQuery),
    responses((status = 200, description = "The export", content_type = "application/x-ndjson"),
              (status = 303, description = "To the login page")))]
async fn export_view(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SearchQuery>,
) -> Response {
    let lang_param = q.lang.clone();
    console_page(
        &state,
        &headers,
        lang_param.as_deref(),
        |state, r, _lang| async move {
            let format = super::audit::export_format(q.format.as_deref())?;
            if opt(&q.sector).is_some() {
                return Err(Error::BadRequest(
                    "exports filter by entity, not by sector".into(),
                ));
            }
            let form = q.form();
            let complete = form.query().is_empty() && q.after.is_none();
            let filter = q.filter(&state).await?.unwrap_or(AuditFilter {
                action: Some("-no-such-action-".into()),
                ..Default::default()
            });
            state
                .audit
                .record(audit_event(&r, "audit.exported", &form.query()))
                .await?;
            let mut res = super::audit::export_response(&state, filter, complete, format).await?;
            crate::web::security_headers(res.headers_mut());
            Ok(res)
        },
    )
    .await
}

/// A period (UTC days, `to` inclusive); the last 30 days by default.
#[derive(Debug, Deserialize, IntoParams)]
struct PeriodQuery {
    /// zh (default) or en.
    lang: Option<String>,
    /// First day (YYYY-MM-DD).
    from: Option<String>,
    /// Last day, inclusive.
    to: Option<String>,
}

impl PeriodQuery {
    /// (from, to) as days for the form and as RFC 3339 bounds for queries.
    fn bounds(&self) -> Result<(String, String, String, String)> {
        let today = crate::store::now().date();
        let to = match opt(&self.to) {
            Some(d) => crate::store::parse_date(&d)?,
            None => today,
        };
        let from = match opt(&self.from) {
            Some(d) => crate::store::parse_date(&d)?,
            None => to - time::Duration::days(29),
        };
        let end = to.next_day().unwrap_or(to);
        let ts = |d: time::Date| format!("{}T00:00:00.000000Z", crate::store::date_string(d));
        Ok((
            crate::store::date_string(from),
            crate::store::date_string(to),
            ts(from),
            ts(end),
        ))
    }
}

/// Per-entity statistics over a period, with a chart.
#[utoipa::path(get, path = "/console/stats", tag = "audit", params(PeriodQuery),
    responses((status = 200, description = "Statistics", content_type = "text/html"),
              (status = 303, description = "To the login page")))]
async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<PeriodQuery>,
) -> Response {
    let lang_param = q.lang.clone();
    console_page(
        &state,
        &headers,
        lang_param.as_deref(),
        |state, r, lang| async move {
            let (from, to, a, b) = q.bounds()?;
            let s = crate::console::stats(&state, &a, &b).await?;
            Ok(framed(
                &state,
                &r,
                lang,
                lang.t("机构统计", "Entity statistics"),
                pages::stats(lang, &from, &to, &s),
            ))
        },
    )
    .await
}

/// Entities with unusual refusal rates, requests outside their use list, budgets spent quickly.
#[utoipa::path(get, path = "/console/anomalies", tag = "audit", params(PeriodQuery),
    responses((status = 200, description = "Anomalies", content_type = "text/html"),
              (status = 303, description = "To the login page")))]
async fn anomalies(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<PeriodQuery>,
) -> Response {
    let lang_param = q.lang.clone();
    console_page(
        &state,
        &headers,
        lang_param.as_deref(),
        |state, r, lang| async move {
            let (from, to, a, b) = q.bounds()?;
            let list = crate::console::anomalies(&state, &a, &b).await?;
            Ok(framed(
                &state,
                &r,
                lang,
                lang.t("异常", "Anomalies"),
                pages::anomalies(lang, &from, &to, &list),
            ))
        },
    )
    .await
}

/// Open objections, overdue ones first.
#[utoipa::path(get, path = "/console/objections", tag = "audit", params(LangQuery),
    responses((status = 200, description = "Objections", content_type = "text/html"),
              (status = 303, description = "To the login page")))]
async fn objections(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LangQuery>,
) -> Response {
    console_page(
        &state,
        &headers,
        q.lang.as_deref(),
        |state, r, lang| async move {
            let mut list = crate::objections::list(
                &state,
                &crate::store::objections::ObjectionFilter {
                    status: Some("open".into()),
                    ..Default::default()
                },
            )
            .await?;
            list.sort_by_key(|o| !o.overdue);
            Ok(framed(
                &state,
                &r,
                lang,
                lang.t("异议督办", "Objections"),
                pages::objections(lang, &list),
            ))
        },
    )
    .await
}

/// An entity's registration, scenarios and approval history.
#[utoipa::path(get, path = "/console/entities/{id}", tag = "audit",
    params(("id" = String, Path, description = "Entity id"), LangQuery),
    responses((status = 200, description = "The entity", content_type = "text/html"),
              (status = 404, description = "No such entity", content_type = "text/html")))]
async fn entity(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LangQuery>,
) -> Response {
    console_page(
        &state,
        &headers,
        q.lang.as_deref(),
        |state, r, lang| async move {
            let (e, scenarios) = state
                .store
                .entity_with_scenarios(&id)
                .await?
                .ok_or_else(|| Error::NotFound("no such entity".into()))?;
            let history = state.store.entity_history(&id).await?;
            Ok(framed(
                &state,
                &r,
                lang,
                &e.name.clone(),
                pages::entity(lang, &e, &scenarios, &history),
            ))
        },
    )
    .await
}
