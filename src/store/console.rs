//! SQL for the regulators' console: accounts, sessions, and the aggregates
//! its statistics and anomaly list are built from.

use super::consent::{consent_from_row, ConsentRow};
use super::{col, Store};
use crate::error::Result;

/// A console account.
#[derive(Debug, Clone)]
pub struct ConsoleAccountRow {
    /// Login name.
    pub username: String,
    /// Shown name.
    pub display_name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Consecutive failures.
    pub failed_logins: i64,
    /// Locked until (unix seconds).
    pub locked_until: i64,
}

/// Records per entity, action and outcome in a period.
#[derive(Debug, Clone)]
pub struct ActivityRow {
    /// The entity (client id).
    pub entity: String,
    /// Action.
    pub action: String,
    /// success or refused.
    pub outcome: String,
    /// How many.
    pub count: i64,
}

impl Store {
    /// A console account.
    pub async fn console_account(&self, username: &str) -> Result<Option<ConsoleAccountRow>> {
        sqlx::query("SELECT * FROM console_accounts WHERE username = $1")
            .bind(username)
            .fetch_optional(self.reader())
            .await?
            .map(|r| {
                Ok(ConsoleAccountRow {
                    username: col(&r, "username")?,
                    display_name: col(&r, "display_name")?,
                    password_hash: col(&r, "password_hash")?,
                    failed_logins: col(&r, "failed_logins")?,
                    locked_until: col(&r, "locked_until")?,
                })
            })
            .transpose()
    }

    /// Creates or resets a console account (clears any lock).
    pub async fn set_console_account(
        &self,
        username: &str,
        display_name: &str,
        hash: &str,
        now: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO console_accounts (username, display_name, role, password_hash, failed_logins, locked_until, created_at, updated_at)
             VALUES ($1, $2, 'regulator', $3, 0, 0, $4, $4)
             ON CONFLICT (username) DO UPDATE SET display_name = excluded.display_name, password_hash = excluded.password_hash,
                 failed_logins = 0, locked_until = 0, updated_at = excluded.updated_at",
        )
        .bind(username)
        .bind(display_name)
        .bind(hash)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Counts a failed login; locks until `locked_until` (0: no lock).
    pub async fn console_login_failed(&self, username: &str, locked_until: i64) -> Result<()> {
        sqlx::query("UPDATE console_accounts SET failed_logins = failed_logins + 1, locked_until = $2 WHERE username = $1")
            .bind(username)
            .bind(locked_until)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Clears the failure count after a successful login.
    pub async fn console_login_succeeded(&self, username: &str) -> Result<()> {
        sqlx::query("UPDATE console_accounts SET failed_logins = 0, locked_until = 0 WHERE username = $1 AND failed_logins <> 0")
            .bind(username)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Starts a console session (its id's digest).
    pub async fn insert_console_session(
        &self,
        digest: &[u8],
        username: &str,
        expires_at: i64,
        now: &str,
    ) -> Result<()> {
        sqlx::query("INSERT INTO console_sessions (digest, username, expires_at, created_at) VALUES ($1, $2, $3, $4)")
            .bind(digest.to_vec())
            .bind(username)
            .bind(expires_at)
            .bind(now)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// The user and shown name of a live console session.
    pub async fn console_session(
        &self,
        digest: &[u8],
        now_unix: i64,
    ) -> Result<Option<(String, String)>> {
        sqlx::query(
            "SELECT s.username, a.display_name FROM console_sessions s JOIN console_accounts a ON a.username = s.username
             WHERE s.digest = $1 AND s.expires_at > $2",
        )
        .bind(digest.to_vec())
        .bind(now_unix)
        .fetch_optional(self.reader())
        .await?
        .map(|r| Ok((col(&r, "username")?, col(&r, "display_name")?)))
        .transpose()
    }

    /// Ends a console session (and forgets expired ones).
    pub async fn delete_console_session(&self, digest: &[u8], now_unix: i64) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE digest = $1 OR expires_at <= $2")
            .bind(digest.to_vec())
            .bind(now_unix)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Entities' records per action and outcome in [from, to).
    pub async fn entity_activity(&self, from: &str, to: &str) -> Result<Vec<ActivityRow>> {
        sqlx::query(
            "SELECT actor_id, action, outcome, COUNT(*) AS n FROM audit_records
             WHERE actor_kind = 'entity' AND time >= $1 AND time < $2
             GROUP BY actor_id, action, outcome ORDER BY actor_id, action, outcome",
        )
        .bind(from)
        .bind(to)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(|r| {
            Ok(ActivityRow {
                entity: col(r, "actor_id")?,
                action: col(r, "action")?,
                outcome: col(r, "outcome")?,
                count: col(r, "n")?,
            })
        })
        .collect()
    }

    /// Entities' refusals in [from, to) by reason (entity, reason, count), most frequent first.
    pub async fn refusal_reasons(
        &self,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, String, i64)>> {
        sqlx::query(
            "SELECT actor_id, COALESCE(reason, '') AS reason, COUNT(*) AS n FROM audit_records
             WHERE actor_kind = 'entity' AND outcome = 'refused' AND time >= $1 AND time < $2
             GROUP BY actor_id, reason ORDER BY n DESC, actor_id LIMIT 200",
        )
        .bind(from)
        .bind(to)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(|r| Ok((col(r, "actor_id")?, col(r, "reason")?, col(r, "n")?)))
        .collect()
    }

    /// Consents granted in [from, to) whose whole budget is spent.
    pub async fn used_up_consents(&self, from: &str, to: &str) -> Result<Vec<ConsentRow>> {
        sqlx::query(
            "SELECT * FROM consents WHERE created_at >= $1 AND created_at < $2 AND retrievals >= max_retrievals
             ORDER BY created_at LIMIT 1000",
        )
        .bind(from)
        .bind(to)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(consent_from_row)
        .collect()
    }

    /// Consents granted and revoked per entity in [from, to): (client, granted, revoked).
    pub async fn consent_counts(&self, from: &str, to: &str) -> Result<Vec<(String, i64, i64)>> {
        sqlx::query(
            "SELECT client_id, COUNT(*) AS granted, SUM(CASE WHEN status = 'revoked' THEN 1 ELSE 0 END) AS revoked
             FROM consents WHERE created_at >= $1 AND created_at < $2 GROUP BY client_id ORDER BY client_id",
        )
        .bind(from)
        .bind(to)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(|r| Ok((col(r, "client_id")?, col(r, "granted")?, col(r, "revoked")?)))
        .collect()
    }

    /// An entity's lifecycle records (applied, approved, suspended, scenarios…), oldest first.
    ///
    /// Only the lifecycle records of all entities are read: their action
    /// entries in the subject index (`v:entity.…`, `v:scenario.…`), and the
    /// tail the index has not reached, never the whole log.
    pub async fn entity_history(&self, id: &str) -> Result<Vec<crate::audit::AuditRecord>> {
        let records = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_records WHERE seq IN (
                 SELECT seq FROM audit_subject_index
                  WHERE (subject >= 'v:entity.' AND subject < 'v:entity/')
                     OR (subject >= 'v:scenario.' AND subject < 'v:scenario/')
                 UNION ALL
                 SELECT seq FROM audit_records
                  WHERE seq > (SELECT indexed_upto FROM audit_index_state WHERE id = 1)
             )
               AND (action LIKE 'entity.%' OR action LIKE 'scenario.%')
               AND (actor_id = $1 OR reason LIKE $2 ESCAPE '\\') ORDER BY seq LIMIT 500",
            COLUMNS = crate::store::audit::COLUMNS
        ))
        .bind(id)
        // The operator's records name the entity first in their reason.
        .bind(format!(
            "{}%",
            id.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        ))
        .fetch_all(self.reader())
        .await?;
        records
            .iter()
            .map(crate::store::audit::record_from_row)
            .collect()
    }
}
