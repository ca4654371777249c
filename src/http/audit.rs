//! Audit log API: signed checkpoints (public), and for regulators search,
//! proofs, streaming export and integrity verification.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Regulator;
use crate::app::AppState;
use crate::audit::checkpoint::{Checkpoint, ConsistencyProof, InclusionProof};
use crate::audit::export::{self, Format};
use crate::audit::verify::{keys_from_jwks, verify_store, VerifyReport};
use crate::audit::{AuditRecord, Outcome};
use crate::error::{Error, Problem, Result};
use crate::keys::BROKER;
use crate::store::audit::{AuditFilter, VerificationRow};
use crate::store::{parse_timestamp, timestamp};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(latest_checkpoint, sign_checkpoint))
        .routes(routes!(list_checkpoints))
        .routes(routes!(consistency))
        .routes(routes!(search))
        .routes(routes!(inclusion))
        .routes(routes!(export_log))
        .routes(routes!(run_verification))
        .routes(routes!(latest_verification))
}

/// The newest signed checkpoint (public, like a Certificate Transparency tree head).
#[utoipa::path(get, path = "/audit/v1/checkpoints/latest", tag = "audit",
    responses((status = 200, description = "Latest checkpoint", body = Checkpoint),
              (status = 404, description = "None signed yet", body = Problem)))]
async fn latest_checkpoint(State(state): State<AppState>) -> Result<Json<Checkpoint>> {
    state
        .checkpoints
        .latest()
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound("no checkpoint has been signed yet".into()))
}

/// Signs a checkpoint over everything recorded so far (regulators; the broker
/// also does this every few seconds).
#[utoipa::path(post, path = "/audit/v1/checkpoints/latest", tag = "audit",
    responses((status = 200, description = "The checkpoint now latest", body = Checkpoint),
              (status = 404, description = "The log is empty", body = Problem)),
    security(("bearer" = ["audit:read"])))]
async fn sign_checkpoint(State(state): State<AppState>, _r: Regulator) -> Result<Json<Checkpoint>> {
    state
        .checkpoints
        .create()
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound("the audit log is empty".into()))
}

/// Every signed checkpoint, oldest first (public).
#[utoipa::path(get, path = "/audit/v1/checkpoints", tag = "audit",
    responses((status = 200, description = "Checkpoints", body = Vec<Checkpoint>)))]
async fn list_checkpoints(State(state): State<AppState>) -> Result<Json<Vec<Checkpoint>>> {
    Ok(Json(state.checkpoints.all().await?))
}

/// Consistency query.
#[derive(Debug, Deserialize, IntoParams)]
struct ConsistencyQuery {
    /// Size of the earlier checkpoint.
    first: i64,
    /// Size of the later checkpoint.
    second: i64,
}

/// Proof that a later checkpoint extends an earlier one (RFC 9162 §2.1.4; public).
#[utoipa::path(get, path = "/audit/v1/proofs/consistency", tag = "audit", params(ConsistencyQuery),
    responses((status = 200, description = "Proof", body = ConsistencyProof),
              (status = 404, description = "No such checkpoint", body = Problem)))]
async fn consistency(
    State(state): State<AppState>,
    q: std::result::Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConsistencyProof>> {
    let Query(q) = q?;
    Ok(Json(
        state.checkpoints.consistency(q.first, q.second).await?,
    ))
}

/// Search filters.
#[derive(Debug, Default, Deserialize, IntoParams, Serialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// From this time (RFC 3339, inclusive).
    pub from: Option<String>,
    /// Until this time (RFC 3339, exclusive).
    pub to: Option<String>,
    /// Acting entity or client id.
    pub entity: Option<String>,
    /// Holder id.
    pub holder: Option<String>,
    /// License identifier.
    pub license: Option<String>,
    /// License type code.
    pub license_type: Option<String>,
    /// Action, e.g. `license.published`, `access.denied`.
    pub action: Option<String>,
    /// success or refused.
    pub outcome: Option<String>,
    /// Cursor: the `next_cursor` of the previous page.
    pub after: Option<i64>,
    /// Page size 1-1000 (default 100).
    pub limit: Option<u32>,
}

impl SearchQuery {
    fn filter(&self) -> Result<AuditFilter> {
        let time = |v: &Option<String>| -> Result<Option<String>> {
            v.as_deref()
                .map(|t| parse_timestamp(t).map(timestamp))
                .transpose()
        };
        if let Some(o) = &self.outcome {
            if !matches!(o.as_str(), "success" | "refused") {
                return Err(Error::BadRequest(
                    "outcome must be success or refused".into(),
                ));
            }
        }
        Ok(AuditFilter {
            from: time(&self.from)?,
            to: time(&self.to)?,
            actor: self.entity.clone(),
            holder: self.holder.clone(),
            license: self.license.clone(),
            license_type: self.license_type.clone(),
            action: self.action.clone(),
            outcome: self.outcome.clone(),
            after: self.after,
            until_seq: None,
            newest_first: false,
        })
    }

    fn describe(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A page of audit records.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordPage {
    /// Records in sequence order.
    pub items: Vec<AuditRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_cursor: Option<i64>,
}

/// Searches the audit log (regulators). The search itself is recorded.
#[utoipa::path(get, path = "/audit/v1/records", tag = "audit", params(SearchQuery),
    responses((status = 200, description = "A page of records", body = RecordPage),
              (status = 400, description = "Bad filter", body = Problem)),
    security(("bearer" = ["audit:read"])))]
async fn search(
    State(state): State<AppState>,
    Regulator(claims): Regulator,
    q: std::result::Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RecordPage>> {
    let Query(q) = q?;
    let filter = q.filter()?;
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
    let items = state.store.audit_records(&filter, limit).await?;
    state
        .audit
        .record(
            claims
                .actor()
                .event("audit.searched", Outcome::Success)
                .reason(q.describe()),
        )
        .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|r| r.seq))
        .flatten();
    Ok(Json(RecordPage { items, next_cursor }))
}

/// Inclusion query.
#[derive(Debug, Deserialize, IntoParams)]
struct InclusionQuery {
    /// Size of the checkpoint to prove against (default: the latest).
    tree_size: Option<i64>,
}

/// Proof that record `seq` is in the log under a checkpoint (RFC 9162 §2.1.3).
#[utoipa::path(get, path = "/audit/v1/records/{seq}/inclusion", tag = "audit",
    params(("seq" = i64, Path, description = "Record sequence number"), InclusionQuery),
    responses((status = 200, description = "Proof", body = InclusionProof),
              (status = 404, description = "Not covered by that checkpoint", body = Problem)),
    security(("bearer" = ["audit:read"])))]
async fn inclusion(
    State(state): State<AppState>,
    _r: Regulator,
    Path(seq): Path<i64>,
    q: std::result::Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<InclusionProof>> {
    let Query(q) = q?;
    Ok(Json(state.checkpoints.inclusion(seq, q.tree_size).await?))
}

/// Export query: the search filters plus the format.
#[derive(Debug, Deserialize, IntoParams)]
struct ExportQuery {
    /// jsonl (default) or csv.
    format: Option<String>,
    #[serde(flatten)]
    #[param(inline)]
    filters: HashMap<String, String>,
}

/// Streams the log (regulators): JSONL (a header with the broker's JWKS, the
/// signed checkpoints, then the records; a complete export verifies offline
/// with `licensegate audit verify --file`) or CSV. A checkpoint is signed
/// first, so everything exported is covered by one.
#[utoipa::path(get, path = "/audit/v1/export", tag = "audit", params(ExportQuery, SearchQuery),
    responses((status = 200, description = "The export", body = String, content_type = "application/x-ndjson")),
    security(("bearer" = ["audit:read"])))]
async fn export_log(
    State(state): State<AppState>,
    Regulator(claims): Regulator,
    q: std::result::Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(q) = q?;
    let format = export_format(q.format.as_deref())?;
    let search: SearchQuery =
        serde_json::from_value(serde_json::to_value(&q.filters).map_err(Error::internal)?)
            .map_err(|e| Error::BadRequest(format!("bad filter: {e}")))?;
    let filter = search.filter()?;
    let complete = q.filters.is_empty();
    state
        .audit
        .record(
            claims
                .actor()
                .event("audit.exported", Outcome::Success)
                .reason(search.describe()),
        )
        .await?;
    export_response(&state, filter, complete, format).await
}

/// An export format from its query value (JSONL by default).
pub(crate) fn export_format(v: Option<&str>) -> Result<Format> {
    match v {
        None | Some("jsonl") => Ok(Format::Jsonl),
        Some("csv") => Ok(Format::Csv),
        Some(other) => Err(Error::BadRequest(format!(
            "format must be jsonl or csv, not {other:?}"
        ))),
    }
}

/// Signs a checkpoint and streams the records of `filter` as a download.
pub(crate) async fn export_response(
    state: &AppState,
    filter: AuditFilter,
    complete: bool,
    format: Format,
) -> Result<Response> {
    let prepared = export::prepare(state, filter, complete, format).await?;
    let body = Body::from_stream(export::stream(state.store.clone(), format, prepared));
    let (ct, name) = match format {
        Format::Jsonl => ("application/x-ndjson", "audit.jsonl"),
        Format::Csv => ("text/csv; charset=utf-8", "audit.csv"),
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, ct.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// Runs an integrity verification of the whole log now and records its result (regulators).
#[utoipa::path(post, path = "/audit/v1/verifications", tag = "audit",
    responses((status = 200, description = "The result", body = VerifyReport)),
    security(("bearer" = ["audit:read"])))]
async fn run_verification(
    State(state): State<AppState>,
    _r: Regulator,
) -> Result<Json<VerifyReport>> {
    Ok(Json(run_and_record(&state).await?))
}

/// Verifies the log in the database with the broker's keys and stores the result.
pub async fn run_and_record(state: &AppState) -> Result<VerifyReport> {
    let keys = keys_from_jwks(&state.keys.jwks(BROKER).await?);
    let report = verify_store(&state.store, state.checkpoints.all().await?, keys).await?;
    state
        .store
        .insert_verification(&VerificationRow {
            time: report.time.clone(),
            ok: report.ok,
            records: report.records,
            checkpoints: report.checkpoints,
            failure: report.failure.clone(),
        })
        .await?;
    Ok(report)
}

/// The result of the last integrity verification (regulators).
#[utoipa::path(get, path = "/audit/v1/verifications/latest", tag = "audit",
    responses((status = 200, description = "The last result", body = VerifyReport),
              (status = 404, description = "Never verified", body = Problem)),
    security(("bearer" = ["audit:read"])))]
async fn latest_verification(
    State(state): State<AppState>,
    _r: Regulator,
) -> Result<Json<VerifyReport>> {
    let v = state
        .store
        .latest_verification()
        .await?
        .ok_or_else(|| Error::NotFound("the log has not been verified yet".into()))?;
    Ok(Json(VerifyReport {
        ok: v.ok,
        records: v.records,
        checkpoints: v.checkpoints,
        failed_at: None,
        failure: v.failure,
        time: v.time,
    }))
}
