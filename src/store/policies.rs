//! SQL for published policy sets (one row per generation).

use super::{col, Store};
use crate::error::Result;

impl Store {
    /// The newest published policy set: (generation, digest), if any.
    pub async fn latest_policy_set(&self) -> Result<Option<(i64, String)>> {
        sqlx::query("SELECT generation, digest FROM policy_sets ORDER BY generation DESC LIMIT 1")
            .fetch_optional(self.reader())
            .await?
            .map(|r| Ok((col(&r, "generation")?, col(&r, "digest")?)))
            .transpose()
    }

    /// The files (JSON) of a published generation.
    pub async fn policy_set_files(&self, generation: i64) -> Result<Option<String>> {
        sqlx::query("SELECT files FROM policy_sets WHERE generation = $1")
            .bind(generation)
            .fetch_optional(self.reader())
            .await?
            .map(|r| col(&r, "files"))
            .transpose()
    }

    /// Publishes a policy set as the next generation; returns it.
    pub async fn publish_policy_set(
        &self,
        digest: &str,
        files: &str,
        at: &str,
        by: &str,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO policy_sets (generation, digest, files, loaded_at, loaded_by) \
             SELECT COALESCE(MAX(generation), 0) + 1, $1, $2, $3, $4 FROM policy_sets \
             RETURNING generation",
        )
        .bind(digest)
        .bind(files)
        .bind(at)
        .bind(by)
        .fetch_one(self.writer())
        .await?;
        col(&row, "generation")
    }
}
