//! Objections (异议): a holder, or an entity that read the license, says a
//! license's data is wrong; the issuing unit answers within 5 working days by
//! correcting the license (a new version) or rejecting with a reason.
//!
//! Every step is audited (`objection.filed`, `objection.corrected`,
//! `objection.rejected`) and the objector is notified of each (outbox, in the
//! same commit as the record). Overdue objections (open past their due date)
//! are listed for regulators.

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::app::Services;
use crate::audit::{ActorKind, AuditEvent, Guard, Guarded, Outcome};
use crate::error::{Error, Result};
use crate::keys::random_token;
use crate::licenses::{license_base, today, IssuerActor, LicenseView, UpdateRequest};
use crate::store::notify::NotificationRow;
use crate::store::objections::{ObjectionFilter, ObjectionRow};
use crate::store::{date_string, now, timestamp};

/// Working days an issuing unit has to answer.
pub const ANSWER_WORKING_DAYS: u32 = 5;

/// Who objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Objector {
    /// The license's holder.
    Holder(String),
    /// An entity (client id) whose consent covers the license.
    Entity(String),
}

/// An objection to file.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewObjection {
    /// The license (any version's identifier).
    pub license: String,
    /// The face fields said to be wrong (at least one).
    pub fields: Vec<String>,
    /// What is wrong (1-2000 characters).
    pub reason: String,
    /// Evidence: what supports the objection (references, document numbers; at most 4000 characters).
    #[serde(default)]
    pub evidence: Option<String>,
}

/// An objection as its parties see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ObjectionView {
    /// Id.
    pub id: String,
    /// The version objected to.
    pub license: String,
    /// The disputed fields.
    pub fields: Vec<String>,
    /// What is wrong.
    pub reason: String,
    /// Evidence.
    pub evidence: Option<String>,
    /// open, corrected or rejected.
    pub status: String,
    /// The issuer's answer.
    pub resolution: Option<String>,
    /// The corrected version.
    pub new_license: Option<String>,
    /// holder or entity.
    pub objector_kind: String,
    /// Who objected (holder id or client id).
    pub objector: String,
    /// The issuing unit.
    pub issuer: String,
    /// The holder.
    pub holder: String,
    /// When filed (RFC 3339).
    pub filed_at: String,
    /// Answer due by the end of this day (YYYY-MM-DD).
    pub due_on: String,
    /// Open past its due date.
    pub overdue: bool,
    /// When answered.
    pub resolved_at: Option<String>,
}

impl ObjectionView {
    /// The view of a stored objection.
    pub fn of(o: &ObjectionRow) -> Self {
        ObjectionView {
            id: o.id.clone(),
            license: o.identifier.clone(),
            fields: serde_json::from_str(&o.fields).unwrap_or_default(),
            reason: o.reason.clone(),
            evidence: o.evidence.clone(),
            status: o.status.clone(),
            resolution: o.resolution.clone(),
            new_license: o.new_identifier.clone(),
            objector_kind: o.objector_kind.clone(),
            objector: o.objector_id.clone(),
            issuer: o.issuer_id.clone(),
            holder: o.holder_id.clone(),
            filed_at: o.filed_at.clone(),
            due_on: o.due_on.clone(),
            overdue: o.status == "open" && o.due_on < date_string(today()),
            resolved_at: o.resolved_at.clone(),
        }
    }
}

/// The issuer's answer.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "decision", rename_all = "snake_case", deny_unknown_fields)]
pub enum Resolution {
    /// The data was wrong: the license gets a new version with this content.
    Correct {
        /// All face fields of the new version.
        #[schema(value_type = Object)]
        fields: serde_json::Map<String, serde_json::Value>,
        /// First day of validity.
        valid_from: String,
        /// Last day of validity; absent for indefinite.
        #[serde(default)]
        valid_until: Option<String>,
        /// What was corrected (shown to the objector).
        reason: String,
    },
    /// The data is right.
    Reject {
        /// Why (shown to the objector).
        reason: String,
    },
}

fn notice_to_objector(o: &ObjectionRow, view: &ObjectionView) -> Result<NotificationRow> {
    crate::notify::queue(
        &o.objector_kind,
        &o.objector_id,
        "objection.updated",
        &json!({ "objection": view }),
    )
}

fn event(
    actor_kind: ActorKind,
    actor: &str,
    action: &str,
    o: &ObjectionRow,
    reason: String,
) -> AuditEvent {
    AuditEvent::new(actor_kind, actor, action, Outcome::Success)
        .holder(&o.holder_id)
        .license(&o.identifier)
        .reason(reason)
}

/// Files an objection. A holder may object to their own licenses; an entity
/// to licenses its consent covers (`covered` lists their identifiers).
pub async fn file(
    services: &Services,
    by: &Objector,
    covered: &[String],
    req: NewObjection,
) -> Result<ObjectionView> {
    let reason = req.reason.trim();
    if reason.is_empty() || reason.chars().count() > 2000 {
        return Err(Error::invalid_field("reason", "must be 1-2000 characters"));
    }
    let evidence = req
        .evidence
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    if evidence.is_some_and(|e| e.chars().count() > 4000) {
        return Err(Error::invalid_field(
            "evidence",
            "must be at most 4000 characters",
        ));
    }
    if req.fields.is_empty() || req.fields.len() > 50 {
        return Err(Error::invalid_field("fields", "name 1-50 face fields"));
    }
    let base = license_base(&req.license)
        .map_err(|_| Error::invalid_field("license", "not a license identifier"))?;
    let not_found = || Error::NotFound(format!("no license {} of yours", req.license));
    let license = services.store.license(&base).await?.ok_or_else(not_found)?;
    let allowed = match by {
        Objector::Holder(h) => license.holder_id == *h,
        Objector::Entity(_) => covered
            .iter()
            .any(|c| license_base(c).is_ok_and(|b| b == base)),
    };
    if !allowed {
        return Err(not_found());
    }
    let ty = services.library.license_type(&license.license_type).await?;
    for f in &req.fields {
        if ty.spec.field(f).is_none() {
            return Err(Error::invalid_field(
                "fields",
                format!("{f:?} is not a face field of {}", ty.spec.code),
            ));
        }
    }
    let (kind, objector_id) = match by {
        Objector::Holder(h) => (ActorKind::Holder, h.clone()),
        Objector::Entity(c) => (ActorKind::Entity, c.clone()),
    };
    let t = now();
    let row = ObjectionRow {
        id: format!("obj_{}", random_token(12)?),
        license_id: license.id.clone(),
        identifier: services.library.current_identifier_of(&license)?,
        issuer_id: license.issuer_id.clone(),
        holder_id: license.holder_id.clone(),
        objector_kind: kind.as_str().to_owned(),
        objector_id: objector_id.clone(),
        fields: serde_json::to_string(&req.fields).map_err(Error::internal)?,
        reason: reason.to_owned(),
        evidence: evidence.map(str::to_owned),
        status: "open".into(),
        resolution: None,
        new_identifier: None,
        filed_at: timestamp(t),
        due_on: date_string(
            services
                .calendar
                .add_working_days(today(), ANSWER_WORKING_DAYS),
        ),
        resolved_at: None,
    };
    let view = ObjectionView::of(&row);
    let mut e = event(
        kind,
        &objector_id,
        "objection.filed",
        &row,
        format!(
            "{} fields={} due={}",
            row.id,
            req.fields.join(","),
            row.due_on
        ),
    );
    e = e.license_type(&license.license_type);
    services
        .audit
        .record_guarded(
            vec![e],
            Guarded {
                then: vec![crate::store::Store::insert_objection_statement(&row)],
                notifications: vec![notice_to_objector(&row, &view)?],
                ..Guarded::new(Guard::Always)
            },
        )
        .await?;
    Ok(view)
}

/// Objections matching a filter.
pub async fn list(services: &Services, f: &ObjectionFilter) -> Result<Vec<ObjectionView>> {
    Ok(services
        .store
        .objections(f)
        .await?
        .iter()
        .map(ObjectionView::of)
        .collect())
}

/// Open objections past their due date.
pub async fn overdue(services: &Services) -> Result<Vec<ObjectionView>> {
    list(
        services,
        &ObjectionFilter {
            due_before: Some(date_string(today())),
            ..Default::default()
        },
    )
    .await
}

/// The issuing unit answers an open objection to one of its licenses.
pub async fn resolve(
    services: &Services,
    actor: &IssuerActor,
    id: &str,
    answer: Resolution,
) -> Result<ObjectionView> {
    let o = services
        .store
        .objection(id)
        .await?
        .filter(|o| o.issuer_id == actor.issuer_id)
        .ok_or_else(|| Error::NotFound("no such objection".into()))?;
    if o.status != "open" {
        return Err(Error::Conflict(format!(
            "this objection is already {}",
            o.status
        )));
    }
    let (status, resolution, new_license): (&str, String, Option<LicenseView>) = match answer {
        Resolution::Reject { reason } => {
            let r = reason.trim();
            if r.is_empty() || r.chars().count() > 2000 {
                return Err(Error::invalid_field("reason", "must be 1-2000 characters"));
            }
            ("rejected", r.to_owned(), None)
        }
        Resolution::Correct {
            fields,
            valid_from,
            valid_until,
            reason,
        } => {
            let r = reason.trim();
            if r.is_empty() || r.chars().count() > 900 {
                return Err(Error::invalid_field("reason", "must be 1-900 characters"));
            }
            let updated = services
                .library
                .update(
                    actor,
                    &o.identifier,
                    UpdateRequest {
                        fields,
                        valid_from,
                        valid_until,
                        reason: Some(format!("objection {}: {r}", o.id)),
                    },
                )
                .await?;
            ("corrected", r.to_owned(), Some(updated))
        }
    };
    let at = timestamp(now());
    let new_identifier = new_license.as_ref().map(|l| l.identifier.clone());
    let mut resolved = o.clone();
    resolved.status = status.to_owned();
    resolved.resolution = Some(resolution.clone());
    resolved.new_identifier = new_identifier.clone();
    resolved.resolved_at = Some(at.clone());
    let view = ObjectionView::of(&resolved);
    let e = actor
        .event(&format!("objection.{status}"), Outcome::Success)
        .holder(&o.holder_id)
        .license(new_identifier.as_deref().unwrap_or(&o.identifier))
        .reason(format!("{} {resolution}", o.id));
    let refused = actor
        .event(&format!("objection.{status}"), Outcome::Refused)
        .holder(&o.holder_id)
        .license(&o.identifier)
        .reason(format!("{} was answered meanwhile", o.id));
    let appended = services
        .audit
        .record_guarded(
            vec![e],
            Guarded {
                notifications: vec![notice_to_objector(&o, &view)?],
                refused: vec![refused],
                ..Guarded::new(Guard::Changes(
                    crate::store::Store::resolve_objection_statement(
                        &o.id,
                        status,
                        &resolution,
                        new_identifier.as_deref(),
                        &at,
                    ),
                ))
            },
        )
        .await?;
    if !appended.applied() {
        return Err(Error::Conflict(
            "this objection was answered meanwhile".into(),
        ));
    }
    Ok(view)
}
