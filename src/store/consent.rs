//! SQL for the consent flows: holder accounts and sessions, authorization
//! requests (PAR and CIBA), codes, consents, refresh tokens, show-a-license
//! codes and DPoP proof ids. Secrets are looked up by their SHA-256 digest.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::cache::Generations;
use super::{bind_all, col, is_sqlite, Bind, Statement, Store, Write};
use crate::error::{Error, Result};

/// A consent's retrieval budget as a group commit reads it.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Not revoked.
    pub active: bool,
    /// Retrievals spent.
    pub retrievals: i64,
    /// Retrievals allowed.
    pub max_retrievals: i64,
    /// End of the consent (unix seconds).
    pub expires_at: i64,
    /// Its entity is active.
    pub client_active: bool,
}

/// What a group commit reads, under its lock, about the consents it spends
/// from and the tokens that spend them.
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    /// By consent id.
    pub consents: HashMap<String, Budget>,
    /// The token ids asked about that are revoked.
    pub revoked: std::collections::HashSet<String>,
    /// The change generations now (see [`super::cache`]).
    pub generations: Generations,
}

impl Budget {
    /// Whether one more retrieval may be spent at `now_unix`, after `spent`
    /// more in the same commit: while the consent is active, unexpired and has
    /// budget left (used up is the counter at its maximum, not a stored state).
    pub fn allows(&self, spent: i64, now_unix: i64) -> bool {
        self.open(now_unix) && self.retrievals.saturating_add(spent) < self.max_retrievals
    }

    /// Whether the consent is active and unexpired at `now_unix`.
    pub fn open(&self, now_unix: i64) -> bool {
        self.active && self.expires_at > now_unix
    }
}

/// A holder's login record.
#[derive(Debug, Clone)]
pub struct AccountRow {
    /// argon2id PHC string.
    pub password_hash: String,
    /// Consecutive failures.
    pub failed_logins: i64,
    /// Locked until (unix seconds).
    pub locked_until: i64,
}

/// A row of `authorization_requests`.
#[derive(Debug, Clone)]
pub struct AuthRequestRow {
    /// Digest of the request handle (request_uri or auth_req_id).
    pub digest: Vec<u8>,
    /// par or ciba.
    pub kind: String,
    /// The client.
    pub client_id: String,
    /// Where the holder is sent back (PAR).
    pub redirect_uri: Option<String>,
    /// The client's state (PAR).
    pub state: Option<String>,
    /// PKCE S256 challenge (PAR).
    pub code_challenge: Option<String>,
    /// Validated authorization_details (JSON).
    pub details: String,
    /// The holder, once known.
    pub holder_id: Option<String>,
    /// CIBA binding message.
    pub binding_message: Option<String>,
    /// Status.
    pub status: String,
    /// The consent made from it.
    pub consent_id: Option<String>,
    /// A non-secret id shown to the holder (CIBA pages).
    pub public_id: String,
    /// CIBA: seconds between polls.
    pub poll_interval: i64,
    /// CIBA: earliest next poll (unix milliseconds: a poll a few milliseconds
    /// after the last one is too early even across a second boundary).
    pub next_poll_at: i64,
    /// Expiry (unix seconds).
    pub expires_at: i64,
    /// Created at.
    pub created_at: String,
}

/// A row of `consents`.
#[derive(Debug, Clone)]
pub struct ConsentRow {
    /// Consent id (also the grant id).
    pub id: String,
    /// The holder.
    pub holder_id: String,
    /// The entity's client.
    pub client_id: String,
    /// Purpose code.
    pub purpose: String,
    /// redirect, decoupled or show_license.
    pub flow: String,
    /// Granted authorization_details (JSON).
    pub details: String,
    /// Retrieval budget.
    pub max_retrievals: i64,
    /// Retrievals made.
    pub retrievals: i64,
    /// active or revoked (expired and used up are computed).
    pub status: String,
    /// Why it was revoked.
    pub status_reason: Option<String>,
    /// Expiry (unix seconds).
    pub expires_at: i64,
    /// Created at.
    pub created_at: String,
    /// Changed at.
    pub updated_at: String,
}

/// A row of `authorization_codes`.
#[derive(Debug, Clone)]
pub struct CodeRow {
    /// The client it was issued to.
    pub client_id: String,
    /// The redirect URI of the request.
    pub redirect_uri: String,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// The consent.
    pub consent_id: String,
    /// Expiry (unix seconds).
    pub expires_at: i64,
    /// When it was redeemed.
    pub used_at: Option<String>,
}

/// A row of `refresh_tokens`.
#[derive(Debug, Clone)]
pub struct RefreshRow {
    /// The consent.
    pub consent_id: String,
    /// The client it is bound to.
    pub client_id: String,
    /// The DPoP key it is bound to.
    pub dpop_jkt: Option<String>,
    /// Expiry (unix seconds).
    pub expires_at: i64,
    /// When revoked.
    pub revoked_at: Option<String>,
}

/// A row of `show_codes`.
#[derive(Debug, Clone)]
pub struct ShowCodeRow {
    /// The holder.
    pub holder_id: String,
    /// The license id.
    pub license_id: String,
    /// JSON array of fields.
    pub fields: String,
    /// Expiry (unix seconds).
    pub expires_at: i64,
}

fn request_from_row(r: &AnyRow) -> Result<AuthRequestRow> {
    Ok(AuthRequestRow {
        digest: col(r, "digest")?,
        kind: col(r, "kind")?,
        client_id: col(r, "client_id")?,
        redirect_uri: col(r, "redirect_uri")?,
        state: col(r, "state")?,
        code_challenge: col(r, "code_challenge")?,
        details: col(r, "details")?,
        holder_id: col(r, "holder_id")?,
        binding_message: col(r, "binding_message")?,
        status: col(r, "status")?,
        consent_id: col(r, "consent_id")?,
        public_id: col(r, "public_id")?,
        poll_interval: col(r, "poll_interval")?,
        next_poll_at: col(r, "next_poll_at")?,
        expires_at: col(r, "expires_at")?,
        created_at: col(r, "created_at")?,
    })
}

pub(crate) fn consent_from_row(r: &AnyRow) -> Result<ConsentRow> {
    Ok(ConsentRow {
        id: col(r, "id")?,
        holder_id: col(r, "holder_id")?,
        client_id: col(r, "client_id")?,
        purpose: col(r, "purpose")?,
        flow: col(r, "flow")?,
        details: col(r, "details")?,
        max_retrievals: col(r, "max_retrievals")?,
        retrievals: col(r, "retrievals")?,
        status: col(r, "status")?,
        status_reason: col(r, "status_reason")?,
        expires_at: col(r, "expires_at")?,
        created_at: col(r, "created_at")?,
        updated_at: col(r, "updated_at")?,
    })
}

impl Store {
    // ---- holders ------------------------------------------------------------

    /// The holder (id, kind) whose identifier has this keyed digest.
    pub async fn holder_by_digest(&self, digest: &[u8]) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT id, kind FROM holders WHERE identifier_digest = $1")
            .bind(digest)
            .fetch_optional(self.reader())
            .await?;
        row.map(|r| Ok((col(&r, "id")?, col(&r, "kind")?)))
            .transpose()
    }

    /// A holder's account.
    pub async fn holder_account(&self, holder_id: &str) -> Result<Option<AccountRow>> {
        let row = sqlx::query(
            "SELECT password_hash, failed_logins, locked_until FROM holder_accounts WHERE holder_id = $1",
        )
        .bind(holder_id)
        .fetch_optional(self.writer())
        .await?;
        row.map(|r| {
            Ok(AccountRow {
                password_hash: col(&r, "password_hash")?,
                failed_logins: col(&r, "failed_logins")?,
                locked_until: col(&r, "locked_until")?,
            })
        })
        .transpose()
    }

    /// Creates or replaces a holder's password (and clears any lock).
    pub async fn set_holder_password(&self, holder_id: &str, hash: &str, now: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO holder_accounts (holder_id, password_hash, failed_logins, locked_until, created_at, updated_at)
             VALUES ($1, $2, 0, 0, $3, $3)
             ON CONFLICT (holder_id) DO UPDATE SET password_hash = $2, failed_logins = 0, locked_until = 0, updated_at = $3",
        )
        .bind(holder_id)
        .bind(hash)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Counts a failed login and sets the lock the caller's rule chose.
    pub async fn record_login_failure(&self, holder_id: &str, locked_until: i64) -> Result<()> {
        sqlx::query(
            "UPDATE holder_accounts SET failed_logins = failed_logins + 1, locked_until = $2 WHERE holder_id = $1",
        )
        .bind(holder_id)
        .bind(locked_until)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Clears the failure count after a successful login.
    pub async fn clear_login_failures(&self, holder_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE holder_accounts SET failed_logins = 0, locked_until = 0 WHERE holder_id = $1 AND failed_logins <> 0",
        )
        .bind(holder_id)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Stores a session.
    pub async fn insert_session(
        &self,
        digest: &[u8],
        holder_id: &str,
        expires_at: i64,
        now: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO holder_sessions (digest, holder_id, expires_at, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(digest)
        .bind(holder_id)
        .bind(expires_at)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// The holder of an unexpired session.
    pub async fn session_holder(&self, digest: &[u8], now_unix: i64) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT holder_id FROM holder_sessions WHERE digest = $1 AND expires_at > $2",
        )
        .bind(digest)
        .bind(now_unix)
        .fetch_optional(self.reader())
        .await?;
        row.map(|r| col(&r, "holder_id")).transpose()
    }

    /// Ends a session (and sweeps expired ones).
    pub async fn delete_session(&self, digest: &[u8], now_unix: i64) -> Result<()> {
        sqlx::query("DELETE FROM holder_sessions WHERE digest = $1 OR expires_at <= $2")
            .bind(digest)
            .bind(now_unix)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    // ---- authorization requests ---------------------------------------------

    /// Stores a pushed or backchannel request.
    pub async fn insert_auth_request(&self, r: &AuthRequestRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO authorization_requests (digest, kind, client_id, redirect_uri, state, code_challenge, details,
               holder_id, binding_message, status, consent_id, public_id, poll_interval, next_poll_at, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&r.digest)
        .bind(&r.kind)
        .bind(&r.client_id)
        .bind(&r.redirect_uri)
        .bind(&r.state)
        .bind(&r.code_challenge)
        .bind(&r.details)
        .bind(&r.holder_id)
        .bind(&r.binding_message)
        .bind(&r.status)
        .bind(&r.consent_id)
        .bind(&r.public_id)
        .bind(r.poll_interval)
        .bind(r.next_poll_at)
        .bind(r.expires_at)
        .bind(&r.created_at)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// A request by the digest of its handle. (Readers see every committed
    /// write at once: SQLite WAL, or the one PostgreSQL primary.)
    pub async fn auth_request(&self, digest: &[u8]) -> Result<Option<AuthRequestRow>> {
        sqlx::query("SELECT * FROM authorization_requests WHERE digest = $1")
            .bind(digest)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(request_from_row)
            .transpose()
    }

    /// A request by its public id.
    pub async fn auth_request_by_public_id(&self, id: &str) -> Result<Option<AuthRequestRow>> {
        sqlx::query("SELECT * FROM authorization_requests WHERE public_id = $1")
            .bind(id)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(request_from_row)
            .transpose()
    }

    /// Moves a request from `from` to `to` if it is still in `from` and
    /// unexpired; sets the consent and expiry when given. Returns
    /// whether this call made the move (so each step happens once).
    pub async fn advance_auth_request(
        &self,
        digest: &[u8],
        from: &str,
        to: &str,
        now_unix: i64,
        consent_id: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE authorization_requests
             SET status = $3, consent_id = COALESCE($5, consent_id), expires_at = COALESCE($6, expires_at)
             WHERE digest = $1 AND status = $2 AND expires_at > $4",
        )
        .bind(digest)
        .bind(from)
        .bind(to)
        .bind(now_unix)
        .bind(consent_id)
        .bind(expires_at)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Binds an opened request to the holder deciding it; false if another
    /// holder has it, or it is no longer open.
    pub async fn bind_request_holder(
        &self,
        digest: &[u8],
        holder_id: &str,
        now_unix: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE authorization_requests SET holder_id = $2
             WHERE digest = $1 AND status = 'opened' AND expires_at > $3 AND (holder_id IS NULL OR holder_id = $2)",
        )
        .bind(digest)
        .bind(holder_id)
        .bind(now_unix)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a CIBA poll: the next poll may come at `next_poll_at` (unix
    /// milliseconds), every `interval` seconds.
    pub async fn set_next_poll(
        &self,
        digest: &[u8],
        next_poll_at: i64,
        interval: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE authorization_requests SET next_poll_at = $2, poll_interval = $3 WHERE digest = $1",
        )
        .bind(digest)
        .bind(next_poll_at)
        .bind(interval)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// A holder's pending, unexpired backchannel requests, newest first.
    pub async fn pending_requests(
        &self,
        holder_id: &str,
        now_unix: i64,
    ) -> Result<Vec<AuthRequestRow>> {
        sqlx::query(
            "SELECT * FROM authorization_requests WHERE holder_id = $1 AND status = 'pending' AND expires_at > $2
             ORDER BY created_at DESC LIMIT 50",
        )
        .bind(holder_id)
        .bind(now_unix)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(request_from_row)
        .collect()
    }

    // ---- consents -----------------------------------------------------------

    /// Stores a consent.
    pub async fn insert_consent(&self, c: &ConsentRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO consents (id, holder_id, client_id, purpose, flow, details, max_retrievals, retrievals, status,
               status_reason, expires_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&c.id)
        .bind(&c.holder_id)
        .bind(&c.client_id)
        .bind(&c.purpose)
        .bind(&c.flow)
        .bind(&c.details)
        .bind(c.max_retrievals)
        .bind(c.retrievals)
        .bind(&c.status)
        .bind(&c.status_reason)
        .bind(c.expires_at)
        .bind(&c.created_at)
        .bind(&c.updated_at)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// One consent.
    pub async fn consent(&self, id: &str) -> Result<Option<ConsentRow>> {
        sqlx::query("SELECT * FROM consents WHERE id = $1")
            .bind(id)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(consent_from_row)
            .transpose()
    }

    /// A holder's consents, newest first.
    pub async fn holder_consents(&self, holder_id: &str) -> Result<Vec<ConsentRow>> {
        sqlx::query(
            "SELECT * FROM consents WHERE holder_id = $1 ORDER BY created_at DESC, id LIMIT 500",
        )
        .bind(holder_id)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(consent_from_row)
        .collect()
    }

    /// Revokes an active consent, in the group commit of its `consent.revoked`
    /// record: changes no row when the consent had already ended.
    pub fn revoke_consent_statement(id: &str, reason: &str, now: &str) -> Statement {
        Statement {
            sql: "UPDATE consents SET status = 'revoked', status_reason = $2, updated_at = $3 WHERE id = $1 AND status = 'active'",
            binds: vec![
                Bind::Text(id.to_owned()),
                Bind::Text(reason.to_owned()),
                Bind::Text(now.to_owned()),
            ],
        }
    }

    // ---- codes and refresh tokens -------------------------------------------

    /// Stores an authorization code.
    pub async fn insert_code(&self, digest: &[u8], c: &CodeRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO authorization_codes (digest, client_id, redirect_uri, code_challenge, consent_id, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(digest)
        .bind(&c.client_id)
        .bind(&c.redirect_uri)
        .bind(&c.code_challenge)
        .bind(&c.consent_id)
        .bind(c.expires_at)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// A code with its consent and whether its client must use DPoP: one
    /// round trip on the token endpoint's path.
    pub async fn code_grant(&self, digest: &[u8]) -> Result<Option<(CodeRow, ConsentRow, bool)>> {
        let row = sqlx::query(
            "SELECT c.*, a.client_id AS code_client_id, a.redirect_uri AS code_redirect_uri,
                    a.code_challenge AS code_challenge, a.expires_at AS code_expires_at,
                    a.used_at AS code_used_at, COALESCE(e.dpop_bound, 0) AS dpop_bound
             FROM authorization_codes a JOIN consents c ON c.id = a.consent_id
             LEFT JOIN entities e ON e.id = a.client_id
             WHERE a.digest = $1",
        )
        .bind(digest)
        .fetch_optional(self.reader())
        .await?;
        row.map(|r| {
            Ok((
                CodeRow {
                    client_id: col(&r, "code_client_id")?,
                    redirect_uri: col(&r, "code_redirect_uri")?,
                    code_challenge: col(&r, "code_challenge")?,
                    consent_id: col(&r, "id")?,
                    expires_at: col(&r, "code_expires_at")?,
                    used_at: col(&r, "code_used_at")?,
                },
                consent_from_row(&r)?,
                col::<i64>(&r, "dpop_bound")? != 0,
            ))
        })
        .transpose()
    }

    /// The single-use update of a code, to run in the group commit of its
    /// `code.redeemed` record: changes one row only on first use.
    pub fn use_code_statement(digest: &[u8], now: &str) -> Statement {
        Statement {
            sql:
                "UPDATE authorization_codes SET used_at = $2 WHERE digest = $1 AND used_at IS NULL",
            binds: vec![Bind::Bytes(digest.to_vec()), Bind::Text(now.to_owned())],
        }
    }

    /// The insert of a refresh token, to run in the group commit of its `token.issued` record.
    pub fn insert_refresh_statement(digest: &[u8], r: &RefreshRow, now: &str) -> Statement {
        Statement {
            sql: "INSERT INTO refresh_tokens (digest, consent_id, client_id, dpop_jkt, expires_at, created_at)
                  VALUES ($1, $2, $3, $4, $5, $6)",
            binds: vec![
                Bind::Bytes(digest.to_vec()),
                Bind::Text(r.consent_id.clone()),
                Bind::Text(r.client_id.clone()),
                r.dpop_jkt.clone().map_or(Bind::Null, Bind::Text),
                Bind::Int(r.expires_at),
                Bind::Text(now.to_owned()),
            ],
        }
    }

    /// Moves a backchannel request from approved to redeemed (once), in the
    /// group commit of its `token.issued` record.
    pub fn redeem_request_statement(digest: &[u8], now_unix: i64) -> Statement {
        Statement {
            sql: "UPDATE authorization_requests SET status = 'redeemed' WHERE digest = $1 AND status = 'approved' AND expires_at > $2",
            binds: vec![Bind::Bytes(digest.to_vec()), Bind::Int(now_unix)],
        }
    }

    /// The budgets of the consents `ids`, read in a group commit that spends
    /// retrievals from them; on PostgreSQL the rows stay locked until that
    /// commit (SQLite's one writer holds them anyway). A consent that does not
    /// exist is absent from the answer. With them: which of the tokens `jtis`
    /// are revoked, the consents' entities' status and the change
    /// generations, so that a call that went by what it read earlier is
    /// confirmed under the same lock as its spend. Read with
    /// [`Store::budgets_from_rows`].
    pub fn budgets_statement(sqlite: bool, ids: &[&str], jtis: &[&str]) -> Result<Statement> {
        let sql = if sqlite {
            "SELECT c.id, c.status, c.retrievals, c.max_retrievals, c.expires_at, k.status AS client_status,
                    (SELECT json_group_array(jti) FROM revoked_tokens
                      WHERE jti IN (SELECT value FROM json_each($2))) AS revoked,
                    (SELECT value FROM cache_generations WHERE name = 'facts') AS facts_generation,
                    (SELECT value FROM cache_generations WHERE name = 'licenses') AS licenses_generation
               FROM consents c LEFT JOIN clients k ON k.client_id = c.client_id
              WHERE c.id IN (SELECT value FROM json_each($1))"
        } else {
            // In one order, so that nothing else taking several can deadlock with it.
            "SELECT c.id, c.status, c.retrievals, c.max_retrievals, c.expires_at, k.status AS client_status,
                    (SELECT COALESCE(json_agg(jti), '[]'::json)::text FROM revoked_tokens
                      WHERE jti IN (SELECT jsonb_array_elements_text($2::jsonb))) AS revoked,
                    (SELECT value FROM cache_generations WHERE name = 'facts') AS facts_generation,
                    (SELECT value FROM cache_generations WHERE name = 'licenses') AS licenses_generation
               FROM consents c LEFT JOIN clients k ON k.client_id = c.client_id
              WHERE c.id IN (SELECT jsonb_array_elements_text($1::jsonb)) ORDER BY c.id FOR UPDATE OF c"
        };
        Ok(Statement {
            sql,
            binds: vec![
                Bind::Text(serde_json::to_string(ids).map_err(Error::internal)?),
                Bind::Text(serde_json::to_string(jtis).map_err(Error::internal)?),
            ],
        })
    }

    /// The budgets in the rows of [`Store::budgets_statement`].
    pub fn budgets_from_rows(rows: &[AnyRow]) -> Result<Budgets> {
        let mut budgets = Budgets::default();
        for (i, r) in rows.iter().enumerate() {
            if i == 0 {
                budgets.generations = Generations::from_row(r)?;
                budgets.revoked =
                    serde_json::from_str(&col::<String>(r, "revoked")?).map_err(Error::internal)?;
            }
            budgets.consents.insert(
                col(r, "id")?,
                Budget {
                    active: col::<String>(r, "status")? == "active",
                    retrievals: col(r, "retrievals")?,
                    max_retrievals: col(r, "max_retrievals")?,
                    expires_at: col(r, "expires_at")?,
                    client_active: col::<Option<String>>(r, "client_status")?.as_deref()
                        == Some("active"),
                },
            );
        }
        Ok(budgets)
    }

    /// Reads the budgets of [`Store::budgets_statement`] in the caller's
    /// transaction.
    pub async fn lock_budgets_in(
        conn: &mut AnyConnection,
        ids: &[&str],
        jtis: &[&str],
    ) -> Result<Budgets> {
        let s = Self::budgets_statement(is_sqlite(conn), ids, jtis)?;
        let rows = bind_all(sqlx::query(s.sql), s.binds)
            .fetch_all(&mut *conn)
            .await?;
        Self::budgets_from_rows(&rows)
    }

    /// Adds the retrievals spent in a group commit to their consents' counters,
    /// in one statement: `spent` pairs a consent with how many it spent.
    pub fn spend_write(sqlite: bool, spent: &[(&str, i64)], now: &str) -> Result<Write> {
        let sql = if sqlite {
            "UPDATE consents SET retrievals = retrievals + s.n, updated_at = $2
               FROM (SELECT value ->> 0 AS id, value ->> 1 AS n FROM json_each($1)) AS s
              WHERE consents.id = s.id"
        } else {
            "UPDATE consents SET retrievals = consents.retrievals + s.n, updated_at = $2
               FROM (SELECT r ->> 0 AS id, (r ->> 1)::bigint AS n FROM jsonb_array_elements($1::jsonb) AS t(r)) AS s
              WHERE consents.id = s.id"
        };
        Ok(Write {
            statement: Statement {
                sql,
                binds: vec![
                    Bind::Text(serde_json::to_string(spent).map_err(Error::internal)?),
                    Bind::Text(now.to_owned()),
                ],
            },
            changes: Some(spent.len() as u64),
            what: "a budget spend missed its consent",
        })
    }

    /// What a resource call needs about its token, in one round trip: the
    /// client's status, whether the token was revoked, its consent, and the
    /// change generations its other reads go by (see [`super::cache`]).
    pub async fn consent_for_call(
        &self,
        client_id: &str,
        jti: &str,
        consent_id: &str,
    ) -> Result<Option<(String, bool, ConsentRow, Generations)>> {
        // The generations in the same snapshot as the consent (see `super::cache`).
        let row = sqlx::query(
            "SELECT c.*, k.status AS client_status,
                    (SELECT COUNT(*) FROM revoked_tokens WHERE jti = $2) AS revoked,
                    (SELECT value FROM cache_generations WHERE name = 'facts') AS facts_generation,
                    (SELECT value FROM cache_generations WHERE name = 'licenses') AS licenses_generation
             FROM consents c JOIN clients k ON k.client_id = c.client_id
             WHERE c.id = $3 AND c.client_id = $1",
        )
            .bind(client_id)
            .bind(jti)
            .bind(consent_id)
            .fetch_optional(self.reader())
            .await?;
        row.map(|r| {
            Ok((
                col(&r, "client_status")?,
                col::<i64>(&r, "revoked")? > 0,
                consent_from_row(&r)?,
                Generations::from_row(&r)?,
            ))
        })
        .transpose()
    }

    /// Stores a refresh token on its own (tokens issued by the token
    /// endpoint store theirs in the group commit of their record).
    pub async fn insert_refresh(&self, digest: &[u8], r: &RefreshRow, now: &str) -> Result<()> {
        let mut conn = self.writer().acquire().await?;
        let s = Self::insert_refresh_statement(digest, r, now);
        Self::execute_values(&mut conn, s.sql, s.binds).await?;
        Ok(())
    }

    /// A refresh token by digest.
    pub async fn refresh(&self, digest: &[u8]) -> Result<Option<RefreshRow>> {
        Ok(self.refresh_grant(digest).await?.map(|(r, _, _)| r))
    }

    /// A refresh token with its consent and whether its client must use
    /// DPoP: one round trip on the token endpoint's path.
    pub async fn refresh_grant(
        &self,
        digest: &[u8],
    ) -> Result<Option<(RefreshRow, ConsentRow, bool)>> {
        let row = sqlx::query(
            "SELECT c.*, t.client_id AS token_client_id, t.dpop_jkt AS dpop_jkt,
                    t.expires_at AS token_expires_at, t.revoked_at AS token_revoked_at,
                    COALESCE(e.dpop_bound, 0) AS dpop_bound
             FROM refresh_tokens t JOIN consents c ON c.id = t.consent_id
             LEFT JOIN entities e ON e.id = t.client_id
             WHERE t.digest = $1",
        )
        .bind(digest)
        .fetch_optional(self.reader())
        .await?;
        row.map(|r| {
            Ok((
                RefreshRow {
                    consent_id: col(&r, "id")?,
                    client_id: col(&r, "token_client_id")?,
                    dpop_jkt: col(&r, "dpop_jkt")?,
                    expires_at: col(&r, "token_expires_at")?,
                    revoked_at: col(&r, "token_revoked_at")?,
                },
                consent_from_row(&r)?,
                col::<i64>(&r, "dpop_bound")? != 0,
            ))
        })
        .transpose()
    }

    /// Revokes a refresh token.
    pub async fn revoke_refresh(&self, digest: &[u8], now: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE digest = $1 AND revoked_at IS NULL",
        )
        .bind(digest)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- show-a-license codes and DPoP --------------------------------------

    /// Stores a show-a-license code.
    pub async fn insert_show_code(&self, digest: &[u8], s: &ShowCodeRow, now: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO show_codes (digest, holder_id, license_id, fields, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(digest)
        .bind(&s.holder_id)
        .bind(&s.license_id)
        .bind(&s.fields)
        .bind(s.expires_at)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Redeems a show-a-license code: returns it only to the one caller that
    /// used it while unexpired.
    pub async fn use_show_code(
        &self,
        digest: &[u8],
        now_unix: i64,
        now: &str,
    ) -> Result<Option<ShowCodeRow>> {
        let done = sqlx::query(
            "UPDATE show_codes SET used_at = $3 WHERE digest = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(digest)
        .bind(now_unix)
        .bind(now)
        .execute(self.writer())
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT * FROM show_codes WHERE digest = $1")
            .bind(digest)
            .fetch_optional(self.writer())
            .await?;
        row.map(|r| {
            Ok(ShowCodeRow {
                holder_id: col(&r, "holder_id")?,
                license_id: col(&r, "license_id")?,
                fields: col(&r, "fields")?,
                expires_at: col(&r, "expires_at")?,
            })
        })
        .transpose()
    }

    /// Records a DPoP proof id; false if it was seen before (a replay).
    pub async fn record_dpop_proof(&self, jti: &str, expires_at: i64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO dpop_proofs (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets expired DPoP proof ids, codes, requests and sessions.
    pub async fn prune_consent_flows(&self, now_unix: i64) -> Result<u64> {
        let mut n = 0;
        for sql in [
            "DELETE FROM dpop_proofs WHERE expires_at < $1",
            "DELETE FROM holder_sessions WHERE expires_at < $1",
            // Codes and requests are kept a day past expiry so that a late
            // replay is still recognised as one.
            "DELETE FROM authorization_codes WHERE expires_at < $1 - 86400",
            "DELETE FROM authorization_requests WHERE expires_at < $1 - 86400",
            "DELETE FROM show_codes WHERE expires_at < $1 - 86400",
        ] {
            n += sqlx::query(sql)
                .bind(now_unix)
                .execute(self.writer())
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}
