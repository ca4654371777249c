//! The holder's pages beyond the consent flows: my licenses, access history,
//! objections, notification choices. Server-rendered, no script; every
//! change is a form post with the session's CSRF token.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::authorize::{access_entries, holder_form, holder_page, LangQuery, Slot};
use crate::app::AppState;
use crate::error::{Error, Result};
use crate::licenses::{effective_status, today};
use crate::notify::Preference;
use crate::objections::{self, NewObjection, Objector};
use crate::store::objections::ObjectionFilter;
use crate::web::holder::{self, HistoryFilter, HistoryItem, LicenseItem};
use crate::web::{csrf_token, field, Lang, Page};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(licenses_page))
        .routes(routes!(history_page))
        .routes(routes!(objections_page, file_objection))
        .routes(routes!(objection_form))
        .routes(routes!(preferences_page, save_preferences))
}

/// My licenses: status, validity, issuer, expiry warnings.
#[utoipa::path(get, path = "/holder", tag = "holder", params(LangQuery),
    responses((status = 200, description = "My licenses", content_type = "text/html"),
              (status = 303, description = "To the login page")))]
async fn licenses_page(
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
        "/holder",
        |state, s, lang| async move {
            let day = today();
            let mut items = Vec::new();
            let mut issuers: HashMap<String, String> = HashMap::new();
            for (l, identifier) in state.library.holder_licenses(&s.holder_id).await? {
                let ty = state.library.license_type(&l.license_type).await?;
                if !issuers.contains_key(&l.issuer_id) {
                    let name = state.store.issuer(&l.issuer_id).await?.map_or_else(
                        || l.issuer_id.clone(),
                        |i| lang.t(&i.name, &i.name_en).to_owned(),
                    );
                    issuers.insert(l.issuer_id.clone(), name);
                }
                let days_left = l
                    .valid_until
                    .as_deref()
                    .and_then(|u| crate::store::parse_date(u).ok())
                    .map(|u| (u - day).whole_days());
                items.push(LicenseItem {
                    identifier,
                    type_name: lang.t(&ty.spec.name, &ty.spec.name_en).to_owned(),
                    issuer: issuers.get(&l.issuer_id).cloned().unwrap_or_default(),
                    status: effective_status(&l, day),
                    valid_from: l.valid_from.clone(),
                    valid_until: l.valid_until.clone(),
                    days_left,
                });
            }
            let csrf = csrf_token(&state.sealer, &s.id);
            Ok(Page::new(
                lang,
                lang.t("我的证照", "My licenses"),
                holder::licenses_page(lang, &items, &csrf),
            )
            .into_response())
        },
    )
    .await
}

/// Filters of the history page.
#[derive(Debug, Deserialize, IntoParams)]
struct HistoryQuery {
    /// zh (default) or en.
    lang: Option<String>,
    /// Entity name or id contains this.
    entity: Option<String>,
    /// License identifier (any version).
    license: Option<String>,
    /// From this date (YYYY-MM-DD).
    from: Option<String>,
    /// Until this date, inclusive.
    to: Option<String>,
}

/// Who read my licenses: every retrieval and verification, filterable.
#[utoipa::path(get, path = "/holder/history", tag = "holder", params(HistoryQuery),
    responses((status = 200, description = "Access history", content_type = "text/html"),
              (status = 303, description = "To the login page")))]
async fn history_page(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Response {
    holder_page(
        &state,
        &slot,
        &headers,
        q.lang.as_deref(),
        "/holder/history",
        |state, s, lang| async move {
            let f = HistoryFilter {
                entity: q.entity.unwrap_or_default().trim().to_owned(),
                license: q.license.unwrap_or_default().trim().to_owned(),
                from: q.from.unwrap_or_default(),
                to: q.to.unwrap_or_default(),
            };
            for d in [&f.from, &f.to] {
                if !d.is_empty() {
                    crate::store::parse_date(d)?;
                }
            }
            let license_base = (!f.license.is_empty()).then(|| {
                crate::licenses::license_base(&f.license).unwrap_or_else(|_| f.license.clone())
            });
            let mut names: HashMap<String, String> = HashMap::new();
            let mut items = Vec::new();
            for e in access_entries(&state, &s.holder_id).await? {
                if !names.contains_key(&e.entity) {
                    let name = state
                        .store
                        .entity(&e.entity)
                        .await?
                        .map_or_else(|| e.entity.clone(), |x| x.name);
                    names.insert(e.entity.clone(), name);
                }
                let entity = names.get(&e.entity).cloned().unwrap_or_default();
                let day = e.time.get(..10).unwrap_or_default();
                let license = e.license.clone().unwrap_or_default();
                let keep = (f.entity.is_empty()
                    || entity.contains(&f.entity)
                    || e.entity.contains(&f.entity))
                    && license_base.as_ref().is_none_or(|b| {
                        crate::licenses::license_base(&license).is_ok_and(|l| l == *b)
                    })
                    && (f.from.is_empty() || day >= f.from.as_str())
                    && (f.to.is_empty() || day <= f.to.as_str());
                if keep {
                    items.push(HistoryItem {
                        time: e.time,
                        action: e.action,
                        entity,
                        license,
                        purpose: e.purpose.unwrap_or_default(),
                        consent: e.consent.unwrap_or_default(),
                        detail: e.detail.unwrap_or_default(),
                    });
                }
            }
            let csrf = csrf_token(&state.sealer, &s.id);
            Ok(Page::new(
                lang,
                lang.t("用证记录", "Access history"),
                holder::history_page(lang, &items, &f, &csrf),
            )
            .into_response())
        },
    )
    .await
}

async fn render_objections(
    state: &AppState,
    holder_id: &str,
    session: &str,
    lang: Lang,
    note: Option<&str>,
) -> Result<Response> {
    let list = objections::list(
        state,
        &ObjectionFilter {
            holder_id: Some(holder_id.to_owned()),
            ..Default::default()
        },
    )
    .await?;
    let csrf = csrf_token(&state.sealer, session);
    Ok(Page::new(
        lang,
        lang.t("我的异议", "My objections"),
        holder::objections_page(lang, &list, &csrf, note),
    )
    .into_response())
}

/// My objections and their answers.
#[utoipa::path(get, path = "/holder/objections", tag = "holder", params(LangQuery),
    responses((status = 200, description = "My objections", content_type = "text/html"),
              (status = 303, description = "To the login page")))]
async fn objections_page(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    Query(q): Query<LangQuery>,
) -> Response {
    holder_page(&state, &slot, &headers, q.lang.as_deref(), "/holder/objections", |state, s, lang| async move {
        render_objections(&state, &s.holder_id, &s.id, lang, None).await
    })
    .await
}

/// Which license to object to.
#[derive(Debug, Deserialize, IntoParams)]
struct ObjectionFormQuery {
    /// zh (default) or en.
    lang: Option<String>,
    /// The license.
    license: String,
}

/// The form to object to one of my licenses' data.
#[utoipa::path(get, path = "/holder/objections/new", tag = "holder", params(ObjectionFormQuery),
    responses((status = 200, description = "The form", content_type = "text/html"),
              (status = 303, description = "To the login page"),
              (status = 404, description = "Not my license", content_type = "text/html")))]
async fn objection_form(
    State(state): State<AppState>,
    slot: Slot,
    headers: HeaderMap,
    q: std::result::Result<Query<ObjectionFormQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return Error::BadRequest("the license parameter is required".into()).into_response();
    };
    let here = format!(
        "/holder/objections/new?license={}",
        form_urlencoded::byte_serialize(q.license.as_bytes()).collect::<String>()
    );
    holder_page(
        &state,
        &slot,
        &headers,
        q.lang.as_deref(),
        &here,
        |state, s, lang| async move {
            let base = crate::licenses::license_base(&q.license)
                .map_err(|_| Error::NotFound("no such license of yours".into()))?;
            let (l, identifier) = state
                .library
                .holder_licenses(&s.holder_id)
                .await?
                .into_iter()
                .find(|(l, _)| l.id == base)
                .ok_or_else(|| {
                    Error::NotFound(lang.t("没有这张证照。", "No such license of yours.").into())
                })?;
            let ty = state.library.license_type(&l.license_type).await?;
            let fields: Vec<(String, String)> = ty
                .spec
                .fields
                .iter()
                .map(|f| (f.key.clone(), lang.t(&f.label, &f.label_en).to_owned()))
                .collect();
            let csrf = csrf_token(&state.sealer, &s.id);
            Ok(Page::new(
                lang,
                lang.t("提出异议", "Object"),
                holder::objection_form(lang, &identifier, &fields, &csrf),
            )
            .into_response())
        },
    )
    .await
}

/// Files an objection (form post with CSRF token).
#[utoipa::path(post, path = "/holder/objections", tag = "holder",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "csrf, license, field…, reason, evidence"),
    responses((status = 200, description = "Filed; my objections", content_type = "text/html"),
              (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html"),
              (status = 422, description = "Invalid objection", content_type = "text/html")))]
async fn file_objection(
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
            let req = NewObjection {
                license: field(&f, "license").unwrap_or_default().to_owned(),
                fields: f
                    .iter()
                    .filter(|(k, _)| k == "field")
                    .map(|(_, v)| v.clone())
                    .collect(),
                reason: field(&f, "reason").unwrap_or_default().to_owned(),
                evidence: field(&f, "evidence").map(str::to_owned),
            };
            let filed =
                objections::file(&state, &Objector::Holder(s.holder_id.clone()), &[], req).await?;
            let note = match lang {
                Lang::Zh => format!("异议已提交，发证单位应于 {} 前答复。", filed.due_on),
                Lang::En => format!(
                    "Objection filed; the issuing unit answers by {}.",
                    filed.due_on
                ),
            };
            render_objections(&state, &s.holder_id, &s.id, lang, Some(&note)).await
        },
    )
    .await
}

async fn render_preferences(
    state: &AppState,
    holder_id: &str,
    session: &str,
    lang: Lang,
    note: Option<&str>,
) -> Result<Response> {
    let prefs = crate::notify::preferences(state, holder_id).await?;
    let csrf = csrf_token(&state.sealer, session);
    Ok(Page::new(
        lang,
        lang.t("通知设置", "Notifications"),
        holder::preferences_page(lang, &prefs, &csrf, note),
    )
    .into_response())
}

/// Which notifications I get.
#[utoipa::path(get, path = "/holder/notifications", tag = "holder", params(LangQuery),
    responses((status = 200, description = "Notification choices", content_type = "text/html"),
              (status = 303, description = "To the login page")))]
async fn preferences_page(
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
        "/holder/notifications",
        |state, s, lang| async move {
            render_preferences(&state, &s.holder_id, &s.id, lang, None).await
        },
    )
    .await
}

/// Saves my notification choices (form post with CSRF token): every `kind`
/// listed is on when also sent as `on`, off otherwise.
#[utoipa::path(post, path = "/holder/notifications", tag = "holder",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "csrf, kind…, on…"),
    responses((status = 200, description = "Saved", content_type = "text/html"),
              (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html")))]
async fn save_preferences(
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
            let on: Vec<&str> = f
                .iter()
                .filter(|(k, _)| k == "on")
                .map(|(_, v)| v.as_str())
                .collect();
            let prefs: Vec<Preference> = f
                .iter()
                .filter(|(k, _)| k == "kind")
                .map(|(_, kind)| Preference {
                    kind: kind.clone(),
                    enabled: on.contains(&kind.as_str()),
                })
                .collect();
            crate::notify::set_preferences(&state, &s.holder_id, &prefs).await?;
            render_preferences(
                &state,
                &s.holder_id,
                &s.id,
                lang,
                Some(lang.t("已保存。", "Saved.")),
            )
            .await
        },
    )
    .await
}
