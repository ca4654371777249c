//! SQL for entities, their scenarios, and client status and secrets.

use sqlx::any::AnyRow;

use super::{col, Store};
use crate::error::Result;

/// A row of `entities`.
#[derive(Debug, Clone)]
pub struct EntityRow {
    /// Entity id (= its client id once approved).
    pub id: String,
    /// Name.
    pub name: String,
    /// Unified social credit code.
    pub uscc: String,
    /// Sector.
    pub sector: String,
    /// Contact.
    pub contact: String,
    /// JSON array of redirect URIs.
    pub redirect_uris: String,
    /// JWKS for private_key_jwt.
    pub jwks: Option<String>,
    /// JWKS URI.
    pub jwks_uri: Option<String>,
    /// Whether its access tokens must be DPoP-bound.
    pub dpop_bound: bool,
    /// pending, approved, rejected, suspended.
    pub status: String,
    /// Filing number given on approval.
    pub filing_no: Option<String>,
    /// Reason of the last decision.
    pub reason: Option<String>,
    /// Applied at.
    pub created_at: String,
    /// Changed at.
    pub updated_at: String,
}

/// A row of `scenarios`.
#[derive(Debug, Clone)]
pub struct ScenarioRow {
    /// Purpose code.
    pub purpose: String,
    /// JSON of the scenario.
    pub spec: String,
    /// pending, approved, withdrawn.
    pub status: String,
}

fn entity_from_row(r: &AnyRow) -> Result<EntityRow> {
    Ok(EntityRow {
        id: col(r, "id")?,
        name: col(r, "name")?,
        uscc: col(r, "uscc")?,
        sector: col(r, "sector")?,
        contact: col(r, "contact")?,
        redirect_uris: col(r, "redirect_uris")?,
        jwks: col(r, "jwks")?,
        jwks_uri: col(r, "jwks_uri")?,
        dpop_bound: col::<i64>(r, "dpop_bound")? != 0,
        status: col(r, "status")?,
        filing_no: col(r, "filing_no")?,
        reason: col(r, "reason")?,
        created_at: col(r, "created_at")?,
        updated_at: col(r, "updated_at")?,
    })
}

impl Store {
    /// Inserts an application with its scenarios (pending).
    pub async fn insert_entity(&self, e: &EntityRow, scenarios: &[(String, String)]) -> Result<()> {
        let mut tx = self.writer().begin().await?;
        sqlx::query(
            "INSERT INTO entities (id, name, uscc, sector, contact, redirect_uris, jwks, jwks_uri, status, filing_no, reason, created_at, updated_at, dpop_bound)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13)",
        )
        .bind(&e.id)
        .bind(&e.name)
        .bind(&e.uscc)
        .bind(&e.sector)
        .bind(&e.contact)
        .bind(&e.redirect_uris)
        .bind(&e.jwks)
        .bind(&e.jwks_uri)
        .bind(&e.status)
        .bind(&e.filing_no)
        .bind(&e.reason)
        .bind(&e.created_at)
        .bind(i64::from(e.dpop_bound))
        .execute(&mut *tx)
        .await?;
        for (purpose, spec) in scenarios {
            sqlx::query(
                "INSERT INTO scenarios (entity_id, purpose, spec, status, created_at, updated_at) VALUES ($1, $2, $3, 'pending', $4, $4)",
            )
            .bind(&e.id)
            .bind(purpose)
            .bind(spec)
            .bind(&e.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One entity.
    pub async fn entity(&self, id: &str) -> Result<Option<EntityRow>> {
        sqlx::query("SELECT * FROM entities WHERE id = $1")
            .bind(id)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(entity_from_row)
            .transpose()
    }

    /// Entities, optionally of one status, by name.
    pub async fn entities(&self, status: Option<&str>) -> Result<Vec<EntityRow>> {
        sqlx::query("SELECT * FROM entities WHERE ($1 IS NULL OR status = $1) ORDER BY name, id")
            .bind(status)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(entity_from_row)
            .collect()
    }

    /// Moves an entity from one of `from` to `to`; false if it was in another state.
    pub async fn set_entity_status(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        filing_no: Option<&str>,
        reason: Option<&str>,
        now: &str,
    ) -> Result<bool> {
        let first = from.first().copied().unwrap_or("");
        let second = from.get(1).copied().unwrap_or(first);
        let done = sqlx::query(
            "UPDATE entities SET status = $2, filing_no = COALESCE($3, filing_no), reason = $4, updated_at = $5
             WHERE id = $1 AND (status = $6 OR status = $7)",
        )
        .bind(id)
        .bind(to)
        .bind(filing_no)
        .bind(reason)
        .bind(now)
        .bind(first)
        .bind(second)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// An entity with its scenarios, in one round trip (every policy decision reads them).
    pub async fn entity_with_scenarios(
        &self,
        id: &str,
    ) -> Result<Option<(EntityRow, Vec<ScenarioRow>)>> {
        let rows = sqlx::query(
            "SELECT e.*, s.purpose AS s_purpose, s.spec AS s_spec, s.status AS s_status
             FROM entities e LEFT JOIN scenarios s ON s.entity_id = e.id
             WHERE e.id = $1 ORDER BY s.purpose",
        )
        .bind(id)
        .fetch_all(self.reader())
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let entity = entity_from_row(first)?;
        let mut scenarios = Vec::new();
        for r in &rows {
            if let Some(purpose) = col::<Option<String>>(r, "s_purpose")? {
                scenarios.push(ScenarioRow {
                    purpose,
                    spec: col(r, "s_spec")?,
                    status: col(r, "s_status")?,
                });
            }
        }
        Ok(Some((entity, scenarios)))
    }

    /// An entity's scenarios.
    pub async fn scenarios(&self, entity_id: &str) -> Result<Vec<ScenarioRow>> {
        sqlx::query(
            "SELECT purpose, spec, status FROM scenarios WHERE entity_id = $1 ORDER BY purpose",
        )
        .bind(entity_id)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(|r| {
            Ok(ScenarioRow {
                purpose: col(r, "purpose")?,
                spec: col(r, "spec")?,
                status: col(r, "status")?,
            })
        })
        .collect()
    }

    /// Creates or replaces a scenario with the given status.
    pub async fn put_scenario(
        &self,
        entity_id: &str,
        purpose: &str,
        spec: &str,
        status: &str,
        now: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO scenarios (entity_id, purpose, spec, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (entity_id, purpose) DO UPDATE SET spec = excluded.spec, status = excluded.status, updated_at = excluded.updated_at",
        )
        .bind(entity_id)
        .bind(purpose)
        .bind(spec)
        .bind(status)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Sets the status of one scenario (or of all an entity's pending ones when
    /// `purpose` is none); returns how many changed.
    pub async fn set_scenario_status(
        &self,
        entity_id: &str,
        purpose: Option<&str>,
        from: &str,
        to: &str,
        now: &str,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE scenarios SET status = $4, updated_at = $5 WHERE entity_id = $1 AND ($2 IS NULL OR purpose = $2) AND status = $3",
        )
        .bind(entity_id)
        .bind(purpose)
        .bind(from)
        .bind(to)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected())
    }

    /// Sets a client's status.
    pub async fn set_client_status(
        &self,
        client_id: &str,
        status: &str,
        now: &str,
    ) -> Result<bool> {
        let done =
            sqlx::query("UPDATE clients SET status = $2, updated_at = $3 WHERE client_id = $1")
                .bind(client_id)
                .bind(status)
                .bind(now)
                .execute(self.writer())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a client's secret; the old one stays valid until `previous_expires_at`.
    pub async fn rotate_client_secret(
        &self,
        client_id: &str,
        digest: &[u8],
        previous_expires_at: i64,
        now: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE clients SET previous_secret_digest = secret_digest, previous_secret_expires_at = $3,
                    secret_digest = $2, updated_at = $4
             WHERE client_id = $1 AND secret_digest IS NOT NULL",
        )
        .bind(client_id)
        .bind(digest)
        .bind(previous_expires_at)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
