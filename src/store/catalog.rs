//! SQL for issuing units and the catalog of license types.

use sqlx::any::AnyRow;

use super::{col, Store};
use crate::error::{Error, Result};
use crate::licenses::catalog::{HolderKind, LicenseType, LicenseTypeSpec, StandardLevel};
use crate::licenses::Issuer;

fn issuer_from_row(row: &AnyRow) -> Result<Issuer> {
    Ok(Issuer {
        id: col(row, "id")?,
        name: col(row, "name")?,
        name_en: col(row, "name_en")?,
        region: col(row, "region")?,
        created_at: col(row, "created_at")?,
    })
}

fn type_from_row(row: &AnyRow) -> Result<LicenseType> {
    let fields: String = col(row, "fields")?;
    let validity: String = col(row, "validity")?;
    Ok(LicenseType {
        spec: LicenseTypeSpec {
            code: col(row, "code")?,
            name: col(row, "name")?,
            name_en: col(row, "name_en")?,
            issuer: col(row, "issuer_id")?,
            holder_kind: HolderKind::parse(&col::<String>(row, "holder_kind")?)?,
            level: StandardLevel::parse(&col::<String>(row, "level")?)?,
            fields: serde_json::from_str(&fields).map_err(Error::internal)?,
            validity: serde_json::from_str(&validity).map_err(Error::internal)?,
        },
        revision: col(row, "revision")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds $1-$8 of a license type statement: code, names, issuer, holder kind,
/// level, fields and validity.
fn bind_type<'q>(q: AnyQuery<'q>, spec: &'q LicenseTypeSpec) -> Result<AnyQuery<'q>> {
    Ok(q.bind(&spec.code)
        .bind(&spec.name)
        .bind(&spec.name_en)
        .bind(&spec.issuer)
        .bind(spec.holder_kind.as_str())
        .bind(spec.level.as_str())
        .bind(serde_json::to_string(&spec.fields).map_err(Error::internal)?)
        .bind(serde_json::to_string(&spec.validity).map_err(Error::internal)?))
}

impl Store {
    /// Inserts an issuing unit; a duplicate id is a unique violation.
    pub async fn insert_issuer(&self, issuer: &Issuer) -> Result<()> {
        sqlx::query(
            "INSERT INTO issuers (id, name, name_en, region, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&issuer.id)
        .bind(&issuer.name)
        .bind(&issuer.name_en)
        .bind(&issuer.region)
        .bind(&issuer.created_at)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// One issuing unit.
    pub async fn issuer(&self, id: &str) -> Result<Option<Issuer>> {
        sqlx::query("SELECT * FROM issuers WHERE id = $1")
            .bind(id)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(issuer_from_row)
            .transpose()
    }

    /// All issuing units, by id.
    pub async fn issuers(&self) -> Result<Vec<Issuer>> {
        sqlx::query("SELECT * FROM issuers ORDER BY id")
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(issuer_from_row)
            .collect()
    }

    /// Inserts a license type; a duplicate code is a unique violation.
    pub async fn insert_license_type(&self, spec: &LicenseTypeSpec, now: &str) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO license_types (code, name, name_en, issuer_id, holder_kind, level, fields, validity, revision, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $9)",
        );
        bind_type(q, spec)?.bind(now).execute(self.writer()).await?;
        Ok(())
    }

    /// Replaces a license type's definition if its revision is still `revision`;
    /// returns false when it was changed meanwhile (or does not exist).
    pub async fn update_license_type(
        &self,
        spec: &LicenseTypeSpec,
        revision: i64,
        now: &str,
    ) -> Result<bool> {
        let q = sqlx::query(
            "UPDATE license_types SET name = $2, name_en = $3, issuer_id = $4, holder_kind = $5, level = $6,
                    fields = $7, validity = $8, revision = revision + 1, updated_at = $9
             WHERE code = $1 AND revision = $10",
        );
        let done = bind_type(q, spec)?
            .bind(now)
            .bind(revision)
            .execute(self.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// One license type.
    pub async fn license_type(&self, code: &str) -> Result<Option<LicenseType>> {
        sqlx::query("SELECT * FROM license_types WHERE code = $1")
            .bind(code)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(type_from_row)
            .transpose()
    }

    /// The whole catalog, by code.
    pub async fn license_types(&self) -> Result<Vec<LicenseType>> {
        sqlx::query("SELECT * FROM license_types ORDER BY code")
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(type_from_row)
            .collect()
    }

    /// Number of licenses of a type.
    pub async fn count_licenses_of_type(&self, code: &str) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM licenses WHERE license_type = $1")
            .bind(code)
            .fetch_one(self.reader())
            .await?;
        col(&row, "n")
    }
}
