//! Bulk import of existing licenses (存量入库): one JSON publication per line.
//!
//! Each line is validated and written on its own, so a refused line changes
//! nothing and does not stop the others. Every line must carry either an
//! `identifier` or a `source_ref` (the record number in the issuer's own
//! system): that is what makes re-running the same file a no-op.

use serde::Serialize;
use utoipa::ToSchema;

use super::{IssuerActor, Library, PublishRequest};
use crate::error::{Error, FieldError};

/// What happened to one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineOutcome {
    /// Published as a new license.
    Accepted,
    /// Already in the library with the same content; nothing written.
    Unchanged,
    /// Refused; nothing written.
    Refused,
}

/// The result for one line.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LineReport {
    /// Line number, from 1.
    pub line: usize,
    /// Outcome.
    pub outcome: LineOutcome,
    /// Identifier of the license (accepted or unchanged lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    /// Why the line was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Field-level problems of a refused line.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// The result of an import.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportReport {
    /// Lines published.
    pub accepted: usize,
    /// Lines already present.
    pub unchanged: usize,
    /// Lines refused.
    pub refused: usize,
    /// One entry per non-empty line.
    pub lines: Vec<LineReport>,
}

impl Library {
    /// Imports JSONL text for the acting issuer.
    pub async fn import(&self, actor: &IssuerActor, text: &str) -> ImportReport {
        let mut report = ImportReport {
            accepted: 0,
            unchanged: 0,
            refused: 0,
            lines: Vec::new(),
        };
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let result = self.import_line(actor, line).await;
            if let Err(e) = &result {
                // A refused line changes nothing in the library, but the refusal is recorded.
                let event = actor
                    .event("license.import_refused", crate::audit::Outcome::Refused)
                    .reason(format!("line {}: {e}", i + 1));
                if let Err(audit_error) = self.audit.record(event).await {
                    tracing::error!(error = %audit_error, "cannot audit a refused import line");
                }
            }
            let entry = match result {
                Ok((outcome, identifier)) => LineReport {
                    line: i + 1,
                    outcome,
                    identifier: Some(identifier),
                    error: None,
                    errors: Vec::new(),
                },
                Err(e) => {
                    let (error, errors) = match e {
                        Error::Invalid { detail, errors } => (detail, errors),
                        Error::Database(_) | Error::Internal(_) => {
                            tracing::error!(line = i + 1, error = %e, "import line failed");
                            ("an internal error occurred".to_owned(), Vec::new())
                        }
                        other => (other.to_string(), Vec::new()),
                    };
                    LineReport {
                        line: i + 1,
                        outcome: LineOutcome::Refused,
                        identifier: None,
                        error: Some(error),
                        errors,
                    }
                }
            };
            match entry.outcome {
                LineOutcome::Accepted => report.accepted += 1,
                LineOutcome::Unchanged => report.unchanged += 1,
                LineOutcome::Refused => report.refused += 1,
            }
            report.lines.push(entry);
        }
        report
    }

    async fn import_line(
        &self,
        actor: &IssuerActor,
        line: &str,
    ) -> crate::Result<(LineOutcome, String)> {
        let req = parse_import_line(line)?;
        let (ty, ident, content, holder_digest, digest) =
            self.prepare_publication(actor, &req).await?;
        let existing = match (&ident, &req.source_ref) {
            (Some(id), _) => self.store.license(&id.base()).await?,
            (None, Some(r)) => {
                self.store
                    .license_by_source_ref(&actor.issuer_id, r)
                    .await?
            }
            (None, None) => None,
        };
        if let Some(l) = existing {
            if l.issuer_id != actor.issuer_id {
                return Err(Error::Conflict("the identifier is already in use".into()));
            }
            // Unchanged if any version of it holds exactly this content.
            let same = self
                .store
                .license_versions(&l.id)
                .await?
                .iter()
                .any(|v| v.content_digest == digest);
            if same && l.source_ref == req.source_ref {
                return Ok((LineOutcome::Unchanged, self.current_identifier_of(&l)?));
            }
            return Err(Error::Conflict(
                "a license with this identifier or source_ref already exists with different content".into(),
            ));
        }
        let id = self
            .insert_publication(actor, &ty, ident, &req, content, &holder_digest, digest)
            .await?;
        let l = self
            .store
            .license(&id)
            .await?
            .ok_or_else(|| Error::internal("imported license vanished"))?;
        Ok((LineOutcome::Accepted, self.current_identifier_of(&l)?))
    }
}

/// One line of an import file: a JSON publication that carries an
/// `identifier` or a `source_ref` (what makes re-running the file a no-op).
pub fn parse_import_line(line: &str) -> crate::Result<PublishRequest> {
    let req: PublishRequest = serde_json::from_str(line)
        .map_err(|e| Error::BadRequest(format!("not a valid publication: {e}")))?;
    if req.identifier.is_none() && req.source_ref.is_none() {
        return Err(Error::invalid_field(
            "source_ref",
            "an imported line needs an identifier or a source_ref, so that re-imports do not duplicate it",
        ));
    }
    Ok(req)
}
