//! SQL for objections (异议).

use sqlx::any::AnyRow;

use super::{col, Bind, Statement, Store};
use crate::error::Result;

/// An objection as stored.
#[derive(Debug, Clone)]
pub struct ObjectionRow {
    /// Id.
    pub id: String,
    /// The license (base id).
    pub license_id: String,
    /// The version objected to.
    pub identifier: String,
    /// Its issuing unit.
    pub issuer_id: String,
    /// Its holder.
    pub holder_id: String,
    /// holder or entity.
    pub objector_kind: String,
    /// Holder id or client id.
    pub objector_id: String,
    /// JSON array of the disputed fields.
    pub fields: String,
    /// What is wrong.
    pub reason: String,
    /// Evidence offered.
    pub evidence: Option<String>,
    /// open, corrected or rejected.
    pub status: String,
    /// The issuer's answer.
    pub resolution: Option<String>,
    /// The corrected version.
    pub new_identifier: Option<String>,
    /// When filed.
    pub filed_at: String,
    /// Answer due (YYYY-MM-DD).
    pub due_on: String,
    /// When answered.
    pub resolved_at: Option<String>,
}

const COLUMNS: &str = "id, license_id, identifier, issuer_id, holder_id, objector_kind, objector_id, fields, reason, evidence, status, resolution, new_identifier, filed_at, due_on, resolved_at";

fn row(r: &AnyRow) -> Result<ObjectionRow> {
    Ok(ObjectionRow {
        id: col(r, "id")?,
        license_id: col(r, "license_id")?,
        identifier: col(r, "identifier")?,
        issuer_id: col(r, "issuer_id")?,
        holder_id: col(r, "holder_id")?,
        objector_kind: col(r, "objector_kind")?,
        objector_id: col(r, "objector_id")?,
        fields: col(r, "fields")?,
        reason: col(r, "reason")?,
        evidence: col(r, "evidence")?,
        status: col(r, "status")?,
        resolution: col(r, "resolution")?,
        new_identifier: col(r, "new_identifier")?,
        filed_at: col(r, "filed_at")?,
        due_on: col(r, "due_on")?,
        resolved_at: col(r, "resolved_at")?,
    })
}

fn opt(v: &Option<String>) -> Bind {
    v.clone().map_or(Bind::Null, Bind::Text)
}

/// Which objections to list.
#[derive(Debug, Default, Clone)]
pub struct ObjectionFilter {
    /// Of this issuing unit.
    pub issuer_id: Option<String>,
    /// Of this holder.
    pub holder_id: Option<String>,
    /// In this status.
    pub status: Option<String>,
    /// Open and due before this date (overdue).
    pub due_before: Option<String>,
}

impl Store {
    /// Files an objection (the guard of its audit commit).
    pub fn insert_objection_statement(o: &ObjectionRow) -> Statement {
        Statement {
            sql: "INSERT INTO objections (id, license_id, identifier, issuer_id, holder_id, objector_kind, objector_id, fields, reason, evidence, status, resolution, new_identifier, filed_at, due_on, resolved_at)
                  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'open', NULL, NULL, $11, $12, NULL)",
            binds: vec![
                Bind::Text(o.id.clone()),
                Bind::Text(o.license_id.clone()),
                Bind::Text(o.identifier.clone()),
                Bind::Text(o.issuer_id.clone()),
                Bind::Text(o.holder_id.clone()),
                Bind::Text(o.objector_kind.clone()),
                Bind::Text(o.objector_id.clone()),
                Bind::Text(o.fields.clone()),
                Bind::Text(o.reason.clone()),
                opt(&o.evidence),
                Bind::Text(o.filed_at.clone()),
                Bind::Text(o.due_on.clone()),
            ],
        }
    }

    /// Answers an open objection; changes nothing when it is no longer open.
    pub fn resolve_objection_statement(
        id: &str,
        status: &str,
        resolution: &str,
        new_identifier: Option<&str>,
        at: &str,
    ) -> Statement {
        Statement {
            sql: "UPDATE objections SET status = $2, resolution = $3, new_identifier = $4, resolved_at = $5
                  WHERE id = $1 AND status = 'open'",
            binds: vec![
                Bind::Text(id.to_owned()),
                Bind::Text(status.to_owned()),
                Bind::Text(resolution.to_owned()),
                new_identifier.map_or(Bind::Null, |v| Bind::Text(v.to_owned())),
                Bind::Text(at.to_owned()),
            ],
        }
    }

    /// One objection.
    pub async fn objection(&self, id: &str) -> Result<Option<ObjectionRow>> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM objections WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(row)
            .transpose()
    }

    /// Objections matching `f`, oldest due first (at most 500).
    pub async fn objections(&self, f: &ObjectionFilter) -> Result<Vec<ObjectionRow>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM objections
             WHERE ($1 IS NULL OR issuer_id = $1) AND ($2 IS NULL OR holder_id = $2)
               AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR (status = 'open' AND due_on < $4))
             ORDER BY due_on, filed_at, id LIMIT 500"
        ))
        .bind(&f.issuer_id)
        .bind(&f.holder_id)
        .bind(&f.status)
        .bind(&f.due_before)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(row)
        .collect()
    }
}
