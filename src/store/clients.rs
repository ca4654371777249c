//! SQL for OAuth clients, signing keys and used client-assertion ids.

use sqlx::any::AnyRow;

use super::{col, Store};
use crate::error::Result;
use crate::oauth::{Client, ClientStatus, Role};

/// A stored signing key.
pub struct StoredKey {
    /// Key id.
    pub kid: String,
    /// Sealed PKCS#8 document.
    pub sealed_private: Vec<u8>,
    /// Public JWK (JSON).
    pub public_jwk: String,
}

fn client_from_row(row: &AnyRow) -> Result<Client> {
    Ok(Client {
        client_id: col(row, "client_id")?,
        name: col(row, "name")?,
        role: Role::parse(&col::<String>(row, "role")?)?,
        issuer_id: col(row, "issuer_id")?,
        secret_digest: col(row, "secret_digest")?,
        jwks: col(row, "jwks")?,
        jwks_uri: col(row, "jwks_uri")?,
        status: ClientStatus::parse(&col::<String>(row, "status")?)?,
        previous_secret: match (
            col::<Option<Vec<u8>>>(row, "previous_secret_digest")?,
            col::<Option<i64>>(row, "previous_secret_expires_at")?,
        ) {
            (Some(d), Some(until)) => Some((d, until)),
            _ => None,
        },
    })
}

fn key_from_row(row: &AnyRow) -> Result<StoredKey> {
    Ok(StoredKey {
        kid: col(row, "kid")?,
        sealed_private: col(row, "sealed_private")?,
        public_jwk: col(row, "public_jwk")?,
    })
}

impl Store {
    /// Inserts a client.
    pub async fn insert_client(&self, c: &Client, now: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO clients (client_id, name, role, issuer_id, secret_digest, jwks, status, created_at, updated_at, jwks_uri)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
        )
        .bind(&c.client_id)
        .bind(&c.name)
        .bind(c.role.as_str())
        .bind(&c.issuer_id)
        .bind(&c.secret_digest)
        .bind(&c.jwks)
        .bind(c.status.as_str())
        .bind(now)
        .bind(&c.jwks_uri)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Replaces a client's keys (fetched again from its JWKS URI).
    pub async fn set_client_jwks(&self, client_id: &str, jwks: &str) -> Result<()> {
        sqlx::query("UPDATE clients SET jwks = $2 WHERE client_id = $1")
            .bind(client_id)
            .bind(jwks)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// One client.
    pub async fn client(&self, client_id: &str) -> Result<Option<Client>> {
        sqlx::query("SELECT * FROM clients WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(client_from_row)
            .transpose()
    }

    /// Records a client assertion's `jti`; false if it was already used.
    pub async fn record_assertion(
        &self,
        jti: &str,
        client_id: &str,
        expires_at: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO used_assertions (jti, client_id, expires_at) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(client_id)
        .bind(expires_at)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a revoked access token (idempotent).
    pub async fn revoke_token(
        &self,
        jti: &str,
        client_id: &str,
        expires_at: i64,
        now: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, client_id, expires_at, revoked_at) VALUES ($1, $2, $3, $4) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(client_id)
        .bind(expires_at)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// The status of a client and whether the token `jti` was revoked, in one
    /// round trip (checked on every API call).
    pub async fn client_status_and_revocation(
        &self,
        client_id: &str,
        jti: &str,
    ) -> Result<Option<(String, bool)>> {
        let row = sqlx::query(
            "SELECT status, (SELECT COUNT(*) FROM revoked_tokens WHERE jti = $2) AS revoked FROM clients WHERE client_id = $1",
        )
        .bind(client_id)
        .bind(jti)
        .fetch_optional(self.reader())
        .await?;
        row.map(|r| Ok((col(&r, "status")?, col::<i64>(&r, "revoked")? > 0)))
            .transpose()
    }

    /// Forgets revocations of tokens that have expired anyway.
    pub async fn prune_revocations(&self, now_unix: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
            .bind(now_unix)
            .execute(self.writer())
            .await?;
        Ok(done.rows_affected())
    }

    /// Forgets assertion ids that have expired (they can no longer be replayed).
    pub async fn prune_assertions(&self, now_unix: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM used_assertions WHERE expires_at < $1")
            .bind(now_unix)
            .execute(self.writer())
            .await?;
        Ok(done.rows_affected())
    }

    /// Stores a new signing key.
    pub async fn insert_signing_key(&self, owner: &str, key: &StoredKey, now: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, owner, alg, sealed_private, public_jwk, created_at) VALUES ($1, $2, 'EdDSA', $3, $4, $5)",
        )
        .bind(&key.kid)
        .bind(owner)
        .bind(&key.sealed_private)
        .bind(&key.public_jwk)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// The newest unretired key of an owner.
    pub async fn active_signing_key(&self, owner: &str) -> Result<Option<StoredKey>> {
        sqlx::query(
            "SELECT * FROM signing_keys WHERE owner = $1 AND retired_at IS NULL ORDER BY created_at DESC, kid LIMIT 1",
        )
        .bind(owner)
        .fetch_optional(self.writer())
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    /// A key of an owner by id.
    pub async fn signing_key(&self, owner: &str, kid: &str) -> Result<Option<StoredKey>> {
        sqlx::query("SELECT * FROM signing_keys WHERE owner = $1 AND kid = $2")
            .bind(owner)
            .bind(kid)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(key_from_row)
            .transpose()
    }

    /// Every key of an owner, retired ones included (for its JWKS).
    pub async fn signing_keys(&self, owner: &str) -> Result<Vec<StoredKey>> {
        sqlx::query("SELECT * FROM signing_keys WHERE owner = $1 ORDER BY created_at DESC, kid")
            .bind(owner)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(key_from_row)
            .collect()
    }
}
