//! SQL for holders, licenses, their versions and lifecycle events.

use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use super::{col, Store};
use crate::error::Result;

/// A row of `licenses`.
#[derive(Debug, Clone)]
pub struct LicenseRow {
    /// Identifier without version and check character.
    pub id: String,
    /// Type code.
    pub license_type: String,
    /// Issuer USCC.
    pub issuer_id: String,
    /// Holder id.
    pub holder_id: String,
    /// Current version number.
    pub current_version: i64,
    /// valid / suspended / cancelled.
    pub status: String,
    /// Reason of the last status change.
    pub status_reason: Option<String>,
    /// Current version's start date.
    pub valid_from: String,
    /// Current version's end date, none for indefinite.
    pub valid_until: Option<String>,
    /// Record number in the issuer's original system (bulk import).
    pub source_ref: Option<String>,
    /// Created at.
    pub created_at: String,
    /// Updated at.
    pub updated_at: String,
}

/// A row of `license_versions`.
#[derive(Debug, Clone)]
pub struct VersionRow {
    /// License id.
    pub license_id: String,
    /// Version number.
    pub version: i64,
    /// Full identifier of this version.
    pub identifier: String,
    /// Start date.
    pub valid_from: String,
    /// End date.
    pub valid_until: Option<String>,
    /// Keyed digest of the content (idempotent import).
    pub content_digest: String,
    /// JSON map field key → disclosure, public fields.
    pub public_disclosures: String,
    /// Sealed JSON map field key → disclosure, personal and sensitive fields.
    pub sealed_disclosures: Vec<u8>,
    /// Issuer-signed JWT of the SD-JWT (no disclosures).
    pub sd_jwt: String,
    /// Signing key id.
    pub kid: String,
    /// Created at.
    pub created_at: String,
}

/// A row of `license_events`.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Version the event applies to.
    pub version: i64,
    /// published / updated / suspended / reinstated / cancelled.
    pub action: String,
    /// Reason given.
    pub reason: Option<String>,
    /// Who did it (client id).
    pub actor: String,
    /// When.
    pub at: String,
}

/// Filters for listing licenses.
#[derive(Debug, Default)]
pub struct LicenseFilter<'a> {
    /// Only this issuer's.
    pub issuer_id: Option<&'a str>,
    /// Only this type.
    pub license_type: Option<&'a str>,
    /// Only this stored status.
    pub status: Option<&'a str>,
    /// Only this holder's.
    pub holder_id: Option<&'a str>,
    /// Only ids after this one (cursor).
    pub after: Option<&'a str>,
    /// Page size.
    pub limit: i64,
}

pub(crate) fn license_from_row(row: &AnyRow) -> Result<LicenseRow> {
    Ok(LicenseRow {
        id: col(row, "id")?,
        license_type: col(row, "license_type")?,
        issuer_id: col(row, "issuer_id")?,
        holder_id: col(row, "holder_id")?,
        current_version: col(row, "current_version")?,
        status: col(row, "status")?,
        status_reason: col(row, "status_reason")?,
        valid_from: col(row, "valid_from")?,
        valid_until: col(row, "valid_until")?,
        source_ref: col(row, "source_ref")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

fn version_from_row(row: &AnyRow) -> Result<VersionRow> {
    Ok(VersionRow {
        license_id: col(row, "license_id")?,
        version: col(row, "version")?,
        identifier: col(row, "identifier")?,
        valid_from: col(row, "valid_from")?,
        valid_until: col(row, "valid_until")?,
        content_digest: col(row, "content_digest")?,
        public_disclosures: col(row, "public_disclosures")?,
        sealed_disclosures: col(row, "sealed_disclosures")?,
        sd_jwt: col(row, "sd_jwt")?,
        kid: col(row, "kid")?,
        created_at: col(row, "created_at")?,
    })
}

/// A write transaction on the library.
pub struct LibraryTx(Transaction<'static, Any>);

impl Store {
    /// Starts a write transaction.
    pub async fn begin_library_write(&self) -> Result<LibraryTx> {
        Ok(LibraryTx(self.writer().begin().await?))
    }

    /// A license by id (without version).
    pub async fn license(&self, id: &str) -> Result<Option<LicenseRow>> {
        sqlx::query("SELECT * FROM licenses WHERE id = $1")
            .bind(id)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(license_from_row)
            .transpose()
    }

    /// A license by its issuer's record number.
    pub async fn license_by_source_ref(
        &self,
        issuer_id: &str,
        source_ref: &str,
    ) -> Result<Option<LicenseRow>> {
        sqlx::query("SELECT * FROM licenses WHERE issuer_id = $1 AND source_ref = $2")
            .bind(issuer_id)
            .bind(source_ref)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(license_from_row)
            .transpose()
    }

    /// One version of a license.
    pub async fn license_version(
        &self,
        license_id: &str,
        version: i64,
    ) -> Result<Option<VersionRow>> {
        sqlx::query("SELECT * FROM license_versions WHERE license_id = $1 AND version = $2")
            .bind(license_id)
            .bind(version)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(version_from_row)
            .transpose()
    }

    /// Every version of a license, oldest first.
    pub async fn license_versions(&self, license_id: &str) -> Result<Vec<VersionRow>> {
        sqlx::query("SELECT * FROM license_versions WHERE license_id = $1 ORDER BY version")
            .bind(license_id)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(version_from_row)
            .collect()
    }

    /// The lifecycle events of a license, oldest first.
    pub async fn license_events(&self, license_id: &str) -> Result<Vec<EventRow>> {
        sqlx::query("SELECT * FROM license_events WHERE license_id = $1 ORDER BY id")
            .bind(license_id)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|row| {
                Ok(EventRow {
                    version: col(row, "version")?,
                    action: col(row, "action")?,
                    reason: col(row, "reason")?,
                    actor: col(row, "actor")?,
                    at: col(row, "at")?,
                })
            })
            .collect()
    }

    /// A page of licenses in id order.
    pub async fn licenses(&self, f: &LicenseFilter<'_>) -> Result<Vec<LicenseRow>> {
        sqlx::query(
            "SELECT * FROM licenses
             WHERE ($1 IS NULL OR issuer_id = $1) AND ($2 IS NULL OR license_type = $2)
               AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR holder_id = $4)
               AND ($5 IS NULL OR id > $5)
             ORDER BY id LIMIT $6",
        )
        .bind(f.issuer_id)
        .bind(f.license_type)
        .bind(f.status)
        .bind(f.holder_id)
        .bind(f.after)
        .bind(f.limit)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(license_from_row)
        .collect()
    }

    /// The sealed identity of a holder.
    pub async fn holder_identity(&self, holder_id: &str) -> Result<Option<(String, Vec<u8>)>> {
        let row = sqlx::query("SELECT kind, sealed_identity FROM holders WHERE id = $1")
            .bind(holder_id)
            .fetch_optional(self.reader())
            .await?;
        row.map(|r| Ok((col(&r, "kind")?, col(&r, "sealed_identity")?)))
            .transpose()
    }

    /// Number of rows in the library tables (licenses, versions, events, holders):
    /// lets tests prove that a refused request changed nothing.
    pub async fn library_counts(&self) -> Result<[i64; 4]> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM licenses) AS a, (SELECT COUNT(*) FROM license_versions) AS b,
                    (SELECT COUNT(*) FROM license_events) AS c, (SELECT COUNT(*) FROM holders) AS d",
        )
        .fetch_one(self.reader())
        .await?;
        Ok([
            col(&row, "a")?,
            col(&row, "b")?,
            col(&row, "c")?,
            col(&row, "d")?,
        ])
    }
}

impl LibraryTx {
    /// Appends audit records inside this transaction, so they commit with the change.
    pub async fn audit(
        &mut self,
        events: Vec<crate::audit::AuditEvent>,
    ) -> Result<Vec<crate::audit::AuditRecord>> {
        crate::audit::append_in(&mut self.0, events).await
    }

    /// Commits.
    pub async fn commit(self) -> Result<()> {
        self.0.commit().await?;
        Ok(())
    }

    /// The holder with this identifier digest, creating it when new.
    pub async fn upsert_holder(
        &mut self,
        new_id: &str,
        kind: &str,
        digest: &[u8],
        sealed_identity: &[u8],
        now: &str,
    ) -> Result<String> {
        sqlx::query(
            "INSERT INTO holders (id, kind, identifier_digest, sealed_identity, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (identifier_digest) DO NOTHING",
        )
        .bind(new_id)
        .bind(kind)
        .bind(digest)
        .bind(sealed_identity)
        .bind(now)
        .execute(&mut *self.0)
        .await?;
        let row = sqlx::query("SELECT id FROM holders WHERE identifier_digest = $1")
            .bind(digest)
            .fetch_one(&mut *self.0)
            .await?;
        col(&row, "id")
    }

    /// The holder's kind.
    pub async fn holder_kind(&mut self, holder_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT kind FROM holders WHERE id = $1")
            .bind(holder_id)
            .fetch_optional(&mut *self.0)
            .await?;
        row.map(|r| col(&r, "kind")).transpose()
    }

    /// Allocates the next serial number for (type, issuer).
    pub async fn next_serial(&mut self, license_type: &str, issuer_id: &str) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO serial_counters (license_type, issuer_id, next_serial) VALUES ($1, $2, 2)
             ON CONFLICT (license_type, issuer_id) DO UPDATE SET next_serial = serial_counters.next_serial + 1
             RETURNING next_serial - 1 AS serial",
        )
        .bind(license_type)
        .bind(issuer_id)
        .fetch_one(&mut *self.0)
        .await?;
        col(&row, "serial")
    }

    /// Inserts a license; false when its id is taken.
    pub async fn insert_license(&mut self, l: &LicenseRow) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO licenses (id, license_type, issuer_id, holder_id, current_version, status, status_reason,
                                   valid_from, valid_until, source_ref, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&l.id)
        .bind(&l.license_type)
        .bind(&l.issuer_id)
        .bind(&l.holder_id)
        .bind(l.current_version)
        .bind(&l.status)
        .bind(&l.status_reason)
        .bind(&l.valid_from)
        .bind(&l.valid_until)
        .bind(&l.source_ref)
        .bind(&l.created_at)
        .bind(&l.updated_at)
        .execute(&mut *self.0)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Inserts a version.
    pub async fn insert_version(&mut self, v: &VersionRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO license_versions (license_id, version, identifier, valid_from, valid_until, content_digest,
                                           public_disclosures, sealed_disclosures, sd_jwt, kid, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&v.license_id)
        .bind(v.version)
        .bind(&v.identifier)
        .bind(&v.valid_from)
        .bind(&v.valid_until)
        .bind(&v.content_digest)
        .bind(&v.public_disclosures)
        .bind(&v.sealed_disclosures)
        .bind(&v.sd_jwt)
        .bind(&v.kid)
        .bind(&v.created_at)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    /// Appends a lifecycle event.
    pub async fn insert_event(&mut self, license_id: &str, e: &EventRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO license_events (license_id, version, action, reason, actor, at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(license_id)
        .bind(e.version)
        .bind(&e.action)
        .bind(&e.reason)
        .bind(&e.actor)
        .bind(&e.at)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    /// Moves a license to a new current version if it is still at `from_version`
    /// and not cancelled; false otherwise.
    pub async fn advance_version(
        &mut self,
        id: &str,
        from_version: i64,
        v: &VersionRow,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE licenses SET current_version = $3, valid_from = $4, valid_until = $5, updated_at = $6
             WHERE id = $1 AND current_version = $2 AND status <> 'cancelled'",
        )
        .bind(id)
        .bind(from_version)
        .bind(v.version)
        .bind(&v.valid_from)
        .bind(&v.valid_until)
        .bind(&v.created_at)
        .execute(&mut *self.0)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Changes a license's status if it is currently one of `from`; false otherwise.
    pub async fn change_status(
        &mut self,
        id: &str,
        from: &[&str],
        to: &str,
        reason: &str,
        now: &str,
    ) -> Result<bool> {
        // `from` has at most two states; spelling them out keeps one query for both backends.
        let first = from.first().copied().unwrap_or("");
        let second = from.get(1).copied().unwrap_or(first);
        let done = sqlx::query(
            "UPDATE licenses SET status = $2, status_reason = $3, updated_at = $4
             WHERE id = $1 AND (status = $5 OR status = $6)",
        )
        .bind(id)
        .bind(to)
        .bind(reason)
        .bind(now)
        .bind(first)
        .bind(second)
        .execute(&mut *self.0)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
